//! Whether the team of threads pays, decided by measurement during training ([`Pacer`]).

use std::time::Instant;

use crate::linalg::Threads;
use crate::nested::{Layer, Network};

/// Steps per cycle of [`Pacer`].
const PACE_CYCLE: usize = 1000;
/// Steps timed on one thread, then as many on the team, at the start of every cycle.
const PACE_PROBE: usize = 8;

/// Decides by measurement whether the team of threads pays: every [`PACE_CYCLE`] steps it
/// times [`PACE_PROBE`] steps on one thread and as many on the team, and runs the rest of the
/// cycle on whichever was faster (the fastest step of each, per unit of [`step_work`], so that
/// the inference rules' batches, whose sweeps vary, compare). Results do not depend on the
/// choice ([`Threads`] is bit-identical to one thread), only the speed: on the 2-core VM the
/// team was measured on, two threads are 1.6× faster most of the time, but in stretches of
/// seconds to minutes both threads run at about half speed and the team is 1.5× slower than
/// one thread (two one-thread processes side by side are not slowed at such times).
#[derive(Debug, Clone)]
pub(super) struct Pacer {
    on: bool,
    step: usize,
    one: f64,
    team: f64,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            on: true,
            step: 0,
            one: f64::INFINITY,
            team: f64::INFINITY,
        }
    }
}

/// The multiply-adds per sample of a training step's products, `n₁n₀ + Σ_k n_k n_{k−1}` (the
/// first layer's pre-activation and the weight gradients), plus `2 Σ_{k≥2} n_k n_{k−1}` per
/// inference sweep (every sweep of [`crate::nested::inference`] computes two products per layer
/// above the first): the unit the [`Pacer`] compares step times in. Element-wise work and Adam
/// scale with the same sizes.
pub(super) fn step_work(net: &Network<f32>, sweeps: usize) -> f64 {
    let size = |l: &Layer<f32>| (l.w.nrows() * l.w.ncols()) as f64;
    let first = net.layers.first().map_or(0.0, size);
    let all: f64 = net.layers.iter().map(size).sum();
    first + all + 2.0 * (all - first) * sweeps as f64
}

impl Pacer {
    /// A pacer that measures (`on`), or one that leaves the team as it is.
    pub(super) fn new(on: bool) -> Self {
        Self {
            on,
            ..Self::default()
        }
    }

    /// Before a step: switches the team for the probes; the probe's start time.
    pub(super) fn before(&mut self, threads: &Threads) -> Option<Instant> {
        if threads.count() < 2 || !self.on {
            return None;
        }
        match self.step % PACE_CYCLE {
            0 => {
                threads.set_parallel(false);
                self.one = f64::INFINITY;
                self.team = f64::INFINITY;
            }
            PACE_PROBE => threads.set_parallel(true),
            _ => {}
        }
        (self.step % PACE_CYCLE < 2 * PACE_PROBE).then(Instant::now)
    }

    /// After a step of `work` ([`step_work`]): records the probe's time per unit of work;
    /// after the last probe, chooses.
    pub(super) fn after(&mut self, threads: &Threads, start: Option<Instant>, work: f64) {
        if let Some(start) = start {
            self.record(threads, start.elapsed().as_secs_f64() / work);
        }
    }

    /// A probe step took `seconds` (per unit of work).
    pub(super) fn record(&mut self, threads: &Threads, seconds: f64) {
        let phase = self.step % PACE_CYCLE;
        self.step += 1;
        if phase < PACE_PROBE {
            self.one = self.one.min(seconds);
        } else {
            self.team = self.team.min(seconds);
        }
        if phase == 2 * PACE_PROBE - 1 {
            threads.set_parallel(self.team < self.one);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::nn::model::{mlp, Init};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Runs one cycle of the pacer with the given probe times; whether the team is on after it,
    /// and the team's state during each probe.
    fn cycle(p: &mut Pacer, threads: &Threads, one: f64, team: f64) -> (bool, Vec<bool>) {
        let mut during = Vec::new();
        for s in 0..PACE_CYCLE {
            let probe = p.before(threads);
            during.push(threads.is_parallel());
            match probe {
                Some(_) if s < PACE_PROBE => p.record(threads, one),
                Some(_) => p.record(threads, team),
                None => p.step += 1,
            }
        }
        (threads.is_parallel(), during)
    }

    #[test]
    fn a_step_is_weighed_by_its_products() {
        let net = mlp(
            &[784, 256, 128, 64, 10],
            Init::Glorot,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        // 256·784 + (256·784 + 128·256 + 64·128 + 10·64), and per sweep the three upper layers
        // twice.
        assert_eq!(step_work(&net, 0), 443_008.0);
        assert_eq!(step_work(&net, 3) - step_work(&net, 2), 83_200.0);
    }

    #[test]
    fn the_pacer_probes_one_thread_then_the_team_and_keeps_the_faster() {
        let threads = Threads::new(2).unwrap();
        let mut p = Pacer::default();
        let (on, during) = cycle(&mut p, &threads, 1.0, 0.6);
        assert!(on, "the team was faster");
        assert!(during[..PACE_PROBE].iter().all(|&t| !t));
        assert!(during[PACE_PROBE..].iter().all(|&t| t));
        let (on, during) = cycle(&mut p, &threads, 1.0, 1.5);
        assert!(!on, "one thread was faster");
        assert!(during[PACE_PROBE..2 * PACE_PROBE].iter().all(|&t| t));
        assert!(during[2 * PACE_PROBE..].iter().all(|&t| !t));
        // One thread, or pacing off: no probes, the team stays as it is.
        assert!(Pacer::default().before(&Threads::default()).is_none());
        let mut off = Pacer {
            on: false,
            ..Pacer::default()
        };
        threads.set_parallel(true);
        assert!(off.before(&threads).is_none() && threads.is_parallel());
    }
}
