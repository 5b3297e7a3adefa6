//! Numerical checks of the paper's claims (`bilevel verify`).
//!
//! Each [`Check`] compares a quantity the crate computes with an *independent* reference:
//! finite differences of the crate's own values (one-sided where the paper's limit is one-sided),
//! closed forms, or brute-force enumeration of active sets. Rows are labelled with the paper's
//! own names (`Def. 1`, `Prop. 2`, ...). Instances are random but seeded, so a run is
//! reproducible; `--seed` draws other instances.

mod check;
pub mod instances;
mod nested;
pub mod reference;
mod single;
pub mod sparse_instances;

use serde::Serialize;

pub use check::{fitted_slope, quantity, rel_err, Check};
use nested::NestedInstance;

/// All checks of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed the instances were drawn from.
    pub seed: u64,
    /// The crate version that ran the checks.
    pub version: &'static str,
    /// The rows.
    pub checks: Vec<Check>,
    /// Number passed.
    pub passed: usize,
    /// Number failed.
    pub failed: usize,
}

/// What a check needs: the seed offset and, built on first use, the network of the nested rows.
struct Context {
    s: u64,
    nested: std::cell::OnceCell<NestedInstance>,
}

impl Context {
    fn nested(&self) -> &NestedInstance {
        self.nested.get_or_init(|| NestedInstance::new(self.s))
    }
}

/// A check (or a group of checks sharing one set of instances) and the row ids it produces.
struct Entry {
    ids: &'static [&'static str],
    run: fn(&Context) -> Vec<Check>,
}

macro_rules! entry {
    ($id:literal, single::$f:ident) => {
        Entry { ids: &[$id], run: |c| vec![single::$f(c.s)] }
    };
    ([$($id:literal),+], single::$f:ident) => {
        Entry { ids: &[$($id),+], run: |c| single::$f(c.s) }
    };
    ($id:literal, nested::$f:ident(seed)) => {
        Entry { ids: &[$id], run: |c| vec![nested::$f(c.s)] }
    };
    ($id:literal, nested::$f:ident) => {
        Entry { ids: &[$id], run: |c| vec![nested::$f(c.nested())] }
    };
}

/// Every check, in the paper's order (Section 2: Def. 1, Props. 1-2, Example 1, Cor. 1 and the
/// rates, Prop. 3; Section 3: Props. 4-5, Eq. 29, Section 3.2.2; Section 4: Def. 2, Prop. 7,
/// Remark 2; Section 5: Cor. 2; Appendix C).
const ENTRIES: &[Entry] = &[
    entry!("def1-gradient-qp", single::def1_gradient_qp),
    entry!("def1-gradient-smooth", single::def1_gradient_smooth),
    entry!("prop1-closed-form", single::prop1_closed_form),
    entry!("prop1-differences", single::prop1_differences),
    entry!(
        [
            "prop2-enumeration",
            "prop2-one-sided",
            "prop2-classification"
        ],
        single::prop2_degenerate
    ),
    entry!("prop2-softmax", single::prop2_softmax),
    #[cfg(feature = "osqp")]
    entry!("prop2-backends", single::prop2_backends),
    entry!("example1-ties", single::example1_ties),
    entry!("example1-generalized", nested::example1_generalized),
    entry!("cor1-gradient-qp", single::cor1_gradient_qp),
    entry!("cor1-gradient-smooth", single::cor1_gradient_smooth),
    entry!(["cor1-rate", "centered-rate"], single::rates),
    entry!("prop3-band", single::prop3_band),
    entry!("prop4-composed", nested::prop4_composed(seed)),
    entry!("prop5-composed", nested::prop5_composed(seed)),
    entry!("table1-sweeps", nested::table1_sweeps),
    entry!("table1-centered", nested::table1_centered),
    entry!("eq29-local-below-loss", nested::eq29_local_below_loss),
    entry!(
        "eq29-fenchel-young-gap",
        nested::eq29_fenchel_young_gap(seed)
    ),
    entry!("softmax-fenchel-young", nested::softmax_fenchel_young(seed)),
    entry!("def2-gradient", single::def2_gradient),
    entry!("def2-limit", single::def2_limit),
    entry!("prop7-penalizer-bp", nested::prop7_penalizer_bp),
    entry!("prop7-fenbp-limit", nested::prop7_fenbp_limit),
    entry!("remark2-eq53", nested::remark2_eq53),
    entry!("cor2-chl", nested::cor2_chl),
    entry!("cor2-convex-chl", nested::cor2_convex_chl),
    entry!("cor2-lpom", nested::cor2_lpom),
    entry!("cor2-mac", nested::cor2_mac),
    entry!("cor2-bp", nested::cor2_bp),
    entry!("cor2-fenbp", nested::cor2_fenbp),
    entry!("cor2-pc", nested::cor2_pc),
    entry!("appendix-c-rule", nested::appendix_c_rule),
];

/// The ids of every row, in report order.
pub fn ids() -> Vec<&'static str> {
    ENTRIES.iter().flat_map(|e| e.ids.iter().copied()).collect()
}

/// Runs every check on instances drawn from `seed`.
pub fn run(seed: u64) -> Report {
    run_only(seed, &[])
}

/// Runs the checks whose rows include one of `ids` (all checks when `ids` is empty; a group
/// that shares its instances runs, and reports, whole). Unknown ids select nothing: compare
/// with [`ids`].
pub fn run_only(seed: u64, ids: &[&str]) -> Report {
    let context = Context {
        s: seed.wrapping_mul(1_000_003),
        nested: std::cell::OnceCell::new(),
    };
    let checks: Vec<Check> = ENTRIES
        .iter()
        .filter(|e| ids.is_empty() || e.ids.iter().any(|id| ids.contains(id)))
        .flat_map(|e| (e.run)(&context))
        .collect();
    let passed = checks.iter().filter(|c| c.passed).count();
    let failed = checks.len() - passed;
    Report {
        seed,
        version: env!("CARGO_PKG_VERSION"),
        checks,
        passed,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_runs_alone_under_its_own_id() {
        let all = ids();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "duplicate ids");
        for id in [
            "prop4-composed",
            "eq29-fenchel-young-gap",
            "def1-gradient-qp",
        ] {
            let report = run_only(0, &[id]);
            assert_eq!(report.checks.len(), 1);
            assert_eq!(report.checks[0].id, id);
            assert!(report.checks[0].passed, "{:?}", report.checks[0]);
        }
        // A group runs whole: its rows share one set of instances.
        let rates = run_only(0, &["cor1-rate"]);
        let ids: Vec<&str> = rates.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["cor1-rate", "centered-rate"]);
        assert!(run_only(0, &["no-such-row"]).checks.is_empty());
    }
}
