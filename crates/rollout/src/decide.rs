//! One step of a rollout: from its status and the analysis' verdicts, what
//! to do and the status after. Pure, so a restarted controller resumes from
//! the stored status and does what the old one would have done.

use crate::{
    analysis::{Outcome, Verdict},
    spec::{Phase, RolloutSpec, RolloutStatus},
};

/// What the controller must do to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set the canary's weight on the driven routes (stable gets the rest).
    SetWeight(u32),
    /// Keep the weight; the analysis failed but not often enough yet.
    Hold,
    /// Keep the weight; the analysis had no verdict (too little traffic):
    /// neither a pass nor a failure.
    Wait,
    /// Weight 0 and a Kubernetes Event: the canary failed.
    RollBack,
    /// The stable Deployment takes the canary's image.
    Promote,
    /// After promotion: weight back to 0, done.
    Finish,
    /// Paused or finished: nothing.
    Nothing,
}

/// The next action and status. `verdicts` is the analysis of the interval
/// just ended (ignored where no analysis is due).
pub fn decide(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    verdicts: &[Verdict],
) -> (Action, RolloutStatus) {
    let mut next = status.clone();
    let action = match status.phase {
        Phase::Idle | Phase::Paused | Phase::Succeeded | Phase::Failed => Action::Nothing,
        Phase::Initializing => {
            next.phase = Phase::Progressing;
            next.canary_weight = spec.step_weight.min(spec.max_weight);
            next.failed_checks = 0;
            Action::SetWeight(next.canary_weight)
        }
        Phase::Promoting => {
            next.phase = Phase::Succeeded;
            next.canary_weight = 0;
            Action::Finish
        }
        Phase::Progressing => {
            next.last_analysis = verdicts
                .iter()
                .map(|v| format!("{}: {} {}", v.check, v.outcome.as_str(), v.detail))
                .collect();
            // No check at all is no evidence: it fails, as no data does.
            let failed =
                verdicts.is_empty() || verdicts.iter().any(|v| v.outcome == Outcome::Failed);
            if !failed && verdicts.iter().any(|v| v.outcome == Outcome::NoVerdict) {
                Action::Wait
            } else if !failed {
                next.failed_checks = 0;
                if status.canary_weight >= spec.max_weight {
                    next.phase = Phase::Promoting;
                    Action::Promote
                } else {
                    next.canary_weight =
                        (status.canary_weight + spec.step_weight).min(spec.max_weight);
                    Action::SetWeight(next.canary_weight)
                }
            } else {
                next.failed_checks = status.failed_checks + 1;
                if next.failed_checks >= spec.failure_threshold.max(1) {
                    next.phase = Phase::Failed;
                    next.canary_weight = 0;
                    Action::RollBack
                } else {
                    Action::Hold
                }
            }
        }
    };
    (action, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec::new("order-service")
    }

    fn verdict(passed: bool) -> Vec<Verdict> {
        vec![Verdict {
            check: "success-rate".into(),
            outcome: if passed {
                Outcome::Passed
            } else {
                Outcome::Failed
            },
            detail: String::new(),
        }]
    }

    #[test]
    fn no_verdict_holds_the_weight_without_counting_a_failure() {
        let spec = spec();
        let status = RolloutStatus {
            phase: Phase::Progressing,
            canary_weight: 20,
            failed_checks: 1,
            ..RolloutStatus::default()
        };
        let none = vec![Verdict {
            check: "success-rate".into(),
            outcome: Outcome::NoVerdict,
            detail: "3 calls".into(),
        }];
        let (action, next) = decide(&spec, &status, &none);
        assert_eq!(action, Action::Wait);
        assert_eq!(
            (next.phase, next.canary_weight, next.failed_checks),
            (Phase::Progressing, 20, 1)
        );
        // A failure beside it still counts.
        let mixed = [none.clone(), verdict(false)].concat();
        assert_eq!(decide(&spec, &status, &mixed).1.failed_checks, 2);
    }

    #[test]
    fn a_healthy_canary_is_stepped_to_max_then_promoted() {
        let (spec, mut status, mut weights) = (spec(), RolloutStatus::default(), Vec::new());
        loop {
            let (action, next) = decide(&spec, &status, &verdict(true));
            status = next;
            match action {
                Action::SetWeight(w) => weights.push(w),
                Action::Promote => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(weights, [10, 20, 30, 40, 50]);
        assert_eq!(decide(&spec, &status, &[]).0, Action::Finish);
    }

    #[test]
    fn failures_roll_back_at_the_threshold_and_a_pass_resets_the_count() {
        let spec = spec();
        let status = RolloutStatus {
            phase: Phase::Progressing,
            canary_weight: 30,
            ..RolloutStatus::default()
        };
        let (a, s) = decide(&spec, &status, &verdict(false));
        let (b, s) = decide(&spec, &s, &verdict(false));
        assert_eq!(
            (a, b, s.failed_checks, s.canary_weight),
            (Action::Hold, Action::Hold, 2, 30)
        );
        let (c, reset) = decide(&spec, &s, &verdict(true));
        assert_eq!((c, reset.failed_checks), (Action::SetWeight(40), 0));
        let (_, s) = decide(&spec, &s, &verdict(false));
        assert_eq!(s.phase, Phase::Failed);
        assert_eq!(s.canary_weight, 0);
        assert_eq!(decide(&spec, &s, &verdict(true)).0, Action::Nothing);
    }

    #[test]
    fn no_checks_never_promote_and_a_stored_status_resumes() {
        let spec = spec();
        let resumed = RolloutStatus {
            phase: Phase::Progressing,
            canary_weight: 30,
            ..RolloutStatus::default()
        };
        assert_eq!(
            decide(&spec, &resumed, &verdict(true)).0,
            Action::SetWeight(40)
        );
        assert_eq!(decide(&spec, &resumed, &[]).0, Action::Hold);
        let paused = RolloutStatus {
            phase: Phase::Paused,
            ..resumed
        };
        assert_eq!(decide(&spec, &paused, &verdict(true)).0, Action::Nothing);
    }
}
