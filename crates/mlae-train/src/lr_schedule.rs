//! Learning-rate schedules, evaluated per optimizer step.
//!
//! Per step rather than per epoch because VTAB-1k runs have only 16 steps per epoch at batch
//! 64: a per-epoch schedule would move the learning rate in visible jumps.

/// The shape of the decay after warm-up: a config format (`train.schedule`, mlae-formats).
pub use mlae_formats::config::ScheduleKind;

/// A warm-up then decay schedule over a known number of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub min_lr: f64,
    /// Linear warm-up from `warmup_start` to `peak` over these steps.
    pub warmup_steps: u64,
    pub warmup_start: f64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// The learning rate used for optimizer step `step` (0-based).
    ///
    /// ```
    /// use mlae_train::lr_schedule::{LrSchedule, ScheduleKind};
    /// let s = LrSchedule { kind: ScheduleKind::Cosine, peak: 1.0, min_lr: 0.0, warmup_steps: 10,
    ///                      warmup_start: 0.0, total_steps: 110 };
    /// assert!((s.lr_at(5) - 0.5).abs() < 1e-12);   // half-way through warm-up
    /// assert!((s.lr_at(10) - 1.0).abs() < 1e-12);  // peak
    /// assert!((s.lr_at(60) - 0.5).abs() < 1e-12);  // half-way through the cosine
    /// ```
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let t = step as f64 / self.warmup_steps as f64;
            return self.warmup_start + (self.peak - self.warmup_start) * t;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Linear => self.min_lr + (self.peak - self.min_lr) * (1.0 - t),
            ScheduleKind::Cosine => {
                self.min_lr + 0.5 * (self.peak - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(warmup: u64, total: u64) -> LrSchedule {
        LrSchedule {
            kind: ScheduleKind::Cosine,
            peak: 5e-4,
            min_lr: 1e-8,
            warmup_steps: warmup,
            warmup_start: 1e-7,
            total_steps: total,
        }
    }

    #[test]
    fn warmup_rises_linearly_then_cosine_decays_monotonically() {
        let s = cosine(20, 200);
        assert!((s.lr_at(0) - 1e-7).abs() < 1e-15);
        for step in 1..20 {
            assert!(s.lr_at(step) > s.lr_at(step - 1));
        }
        assert!((s.lr_at(20) - 5e-4).abs() < 1e-15);
        for step in 21..200 {
            assert!(s.lr_at(step) < s.lr_at(step - 1));
        }
        assert!((s.lr_at(200) - 1e-8).abs() < 1e-15);
        assert!((s.lr_at(10_000) - 1e-8).abs() < 1e-15, "past the end it stays at the floor");
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = cosine(0, 100);
        assert_eq!(s.lr_at(0), 5e-4);
        let lin = LrSchedule { kind: ScheduleKind::Linear, ..cosine(0, 100) };
        assert!((lin.lr_at(50) - (1e-8 + (5e-4 - 1e-8) * 0.5)).abs() < 1e-15);
        let c = LrSchedule { kind: ScheduleKind::Constant, ..cosine(0, 100) };
        assert_eq!(c.lr_at(99), 5e-4);
    }
}
