//! `bilevel derive`'s `"gradients"` request (the gradients of L with respect to the layer's
//! data) and the loss given by its gradient only (`{"kind": "gradient"}`), checked against the
//! library and against the equivalent explicit losses.

use bilevel::app::derive::{derive, GRADIENT_LOSS_NOTE};
use serde_json::Value;

/// A layer with a weakly active row at θ = 0 (ReLU-like: z* = max(θx, 0) at a tie) and one
/// strongly active and one equality row.
const LAYER: &str = r#""Q": [[2,0,0],[0,1,0],[0,0,3]], "c": [0, 1, 0.5], "B": [[1,0],[0,1],[1,1]],
    "theta": [0, 0], "A": [[1,0,0],[0,1,0]], "b": [0, 2], "A_eq": [[1,1,1]], "b_eq": [3]"#;

fn run(extra: &str) -> Value {
    let out = derive(&format!("{{{LAYER}, {extra}}}")).unwrap();
    serde_json::to_value(out).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn requested_gradients_come_back_shaped_like_the_data() {
    let out = run(
        r#""loss": {"kind":"linear","g":[1,-2,0.5]}, "gradients": ["Q","B","c","A","b","A_eq","b_eq"]"#,
    );
    let rows = |k: &str| out[k].as_array().unwrap().len();
    assert_eq!(
        (
            rows("grad_Q"),
            rows("grad_B"),
            rows("grad_A"),
            rows("grad_A_eq")
        ),
        (3, 3, 2, 1)
    );
    assert_eq!(out["grad_B"][0].as_array().unwrap().len(), 2);
    // ∂L/∂c = −ż, and dL/dθ = Bᵀ ∂L/∂c.
    let (z_dot, grad_c) = (floats(&out["z_dot"]), floats(&out["grad_c"]));
    for (a, b) in z_dot.iter().zip(&grad_c) {
        assert_eq!(*a, -*b);
    }
    let gt = floats(&out["grad_theta"]);
    assert!((gt[0] - (grad_c[0] + grad_c[2])).abs() < 1e-14);
    assert!((gt[1] - (grad_c[1] + grad_c[2])).abs() < 1e-14);
    // ∂L/∂b is each row's multiplier derivative: 0 on inactive rows, ≥ 0 on weak ones.
    assert_eq!(floats(&out["grad_b_eq"]).len(), 1);
    let grad_b = floats(&out["grad_b"]);
    for (i, label) in out["constraints"].as_array().unwrap().iter().enumerate() {
        match label.as_str().unwrap() {
            "inactive" => assert_eq!(grad_b[i], 0.0),
            "weak" => assert!(grad_b[i] >= 0.0),
            _ => {}
        }
    }
    assert!(out["constraints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l == "weak"));
    // Only what was asked for.
    let some = run(r#""loss": {"kind":"linear","g":[1,-2,0.5]}, "gradients": ["b"]"#);
    assert!(some.get("grad_b").is_some() && some.get("grad_Q").is_none());
    let none = run(r#""loss": {"kind":"linear","g":[1,-2,0.5]}"#);
    assert!(none
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.starts_with("grad_") || k == "grad_theta"));
    // An unknown datum names the entry.
    let e = derive(&format!(
        r#"{{{LAYER}, "loss": {{"kind":"linear","g":[1,0,0]}}, "gradients": ["b","theta"]}}"#
    ));
    assert!(e.unwrap_err().to_string().contains("gradients[1]"));
}

#[test]
fn a_loss_given_by_its_gradient_is_every_loss_with_that_gradient() {
    let g = [1.0, -2.0, 0.5];
    let by_gradient = run(r#""loss": {"kind":"gradient","g":[1,-2,0.5]}, "betas": [0.1]"#);
    let linear = run(r#""loss": {"kind":"linear","g":[1,-2,0.5]}, "betas": [0.1]"#);
    assert_eq!(by_gradient["loss_note"], GRADIENT_LOSS_NOTE);
    assert!(linear.get("loss_note").is_none());
    assert_eq!(by_gradient["z_dot"], linear["z_dot"]);
    assert_eq!(by_gradient["grad_theta"], linear["grad_theta"]);
    assert_eq!(by_gradient["branches"], linear["branches"]);
    // A squared loss with the same gradient at z* (target t = z* − g) has the same limit.
    let z: Vec<f64> = floats(&linear["z_star"]);
    let t: Vec<String> = z
        .iter()
        .zip(g)
        .map(|(z, g)| format!("{:e}", z - g))
        .collect();
    let squared = run(&format!(
        r#""loss": {{"kind":"squared","target":[{}]}}"#,
        t.join(",")
    ));
    for (a, b) in floats(&squared["grad_theta"])
        .iter()
        .zip(floats(&by_gradient["grad_theta"]))
    {
        assert!((a - b).abs() < 1e-12, "{a} {b}");
    }
    // The surrogates are Def. 2's: value = linearized value.
    let s = &by_gradient["surrogates"][0];
    assert_eq!(s["value"], s["linearized_value"]);
}

#[test]
fn a_batch_of_thetas_is_answered_item_by_item() {
    use bilevel::app::derive::derive_json;
    let layer = LAYER.replace(r#""theta": [0, 0],"#, "");
    let thetas = ["[0, 0]", "[1, -0.5]", "[-2, 3]", "[0.25, 0.25]"];
    let batch = derive_json(&format!(
        r#"{{{layer}, "theta": [{}], "loss": {{"kind":"linear","g":[1,-2,0.5]}}, "betas": [0.01], "gradients": ["b"]}}"#,
        thetas.join(",")
    ))
    .unwrap();
    let items = batch.as_array().unwrap();
    assert_eq!(items.len(), thetas.len());
    for (item, theta) in items.iter().zip(thetas) {
        let single = derive_json(&format!(
            r#"{{{layer}, "theta": {theta}, "loss": {{"kind":"linear","g":[1,-2,0.5]}}, "betas": [0.01], "gradients": ["b"]}}"#
        ))
        .unwrap();
        assert_eq!(*item, single, "theta {theta}");
        assert!(item.get("grad_b").is_some());
    }
    // The single-θ entry point refuses a batch; a bad item refuses the batch, naming it.
    let e = derive(&format!(
        r#"{{{layer}, "theta": [[0,0]], "loss": {{"kind":"linear","g":[1,0,0]}}}}"#
    ));
    assert!(e.unwrap_err().to_string().contains("derive_json"));
    let e = derive_json(&format!(
        r#"{{{layer}, "theta": [[0,0],[1]], "loss": {{"kind":"linear","g":[1,0,0]}}}}"#
    ));
    assert!(e.unwrap_err().to_string().contains("theta[1]"));
}
