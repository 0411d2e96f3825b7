//! Fault points: the moments of a switchover where the crash and stall tests stop the
//! controller. The controller only says which point it reached; what happens there (an abort,
//! a SIGSTOP) is the binary's business, through a [`FaultInjector`] given at start.

use std::fmt;
use std::str::FromStr;

use crate::promotion::Step;

/// A moment of a switchover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// A step is done.
    StepDone(Step),
    /// The intent is recorded (in Preflight); nothing is changed on the nodes yet, writes are
    /// not paused.
    IntentRecorded,
    /// The old primary follows the target (still paused); the target is not promoted yet.
    OldDemoted,
    /// The target is promoted; the new epoch is not recorded yet (writes still paused).
    TargetPromoted,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 11] = [
        FaultPoint::IntentRecorded,
        FaultPoint::StepDone(Step::Preflight),
        FaultPoint::StepDone(Step::Fence),
        FaultPoint::StepDone(Step::WaitCatchUp),
        FaultPoint::OldDemoted,
        FaultPoint::TargetPromoted,
        FaultPoint::StepDone(Step::Promote),
        FaultPoint::StepDone(Step::SwitchDns),
        FaultPoint::StepDone(Step::Release),
        FaultPoint::StepDone(Step::Repoint),
        FaultPoint::StepDone(Step::Verify),
    ];
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultPoint::StepDone(step) => {
                let name = serde_json::to_value(step).unwrap_or_default();
                write!(f, "{}", name.as_str().unwrap_or("?"))
            }
            FaultPoint::IntentRecorded => write!(f, "intent"),
            FaultPoint::OldDemoted => write!(f, "demoted"),
            FaultPoint::TargetPromoted => write!(f, "promoted"),
        }
    }
}

impl FromStr for FaultPoint {
    type Err = String;

    fn from_str(name: &str) -> Result<FaultPoint, String> {
        FaultPoint::ALL
            .into_iter()
            .find(|p| p.to_string() == name)
            .ok_or_else(|| {
                let known: Vec<String> = FaultPoint::ALL.iter().map(|p| p.to_string()).collect();
                format!(
                    "unknown fault point \"{name}\"; known: {}",
                    known.join(", ")
                )
            })
    }
}

/// What happens to the controller at its fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// The process dies at once, as with `kill -9`.
    Crash,
    /// The process stops (SIGSTOP) until someone resumes it, as a VM pause would.
    Stall,
}

/// One injected fault: `crash-after:<point>` or `stall-after:<point>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub action: FaultAction,
    pub at: FaultPoint,
}

impl Fault {
    /// What to do at `point`: this fault's action if it is armed there.
    pub fn action_at(&self, point: FaultPoint) -> Option<FaultAction> {
        (self.at == point).then_some(self.action)
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Fault, String> {
        let (action, point) = if let Some(point) = text.strip_prefix("crash-after:") {
            (FaultAction::Crash, point)
        } else if let Some(point) = text.strip_prefix("stall-after:") {
            (FaultAction::Stall, point)
        } else {
            return Err(format!(
                "\"{text}\" is not a fault; use crash-after:<point> or stall-after:<point>"
            ));
        };
        Ok(Fault {
            action,
            at: point.parse()?,
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            FaultAction::Crash => write!(f, "crash-after:{}", self.at),
            FaultAction::Stall => write!(f, "stall-after:{}", self.at),
        }
    }
}

/// Told of every fault point the controller reaches; does what a test asked for there.
pub trait FaultInjector: Send + Sync {
    /// The fault to inject at `point`, if any (the controller reports it before it happens).
    fn at(&self, point: FaultPoint) -> Option<FaultAction>;
    /// Injects it: does not return for a crash.
    fn inject(&self, action: FaultAction);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_reads_back_as_written() {
        for point in FaultPoint::ALL {
            assert_eq!(point.to_string().parse::<FaultPoint>(), Ok(point));
            for action in [FaultAction::Crash, FaultAction::Stall] {
                let fault = Fault { action, at: point };
                assert_eq!(fault.to_string().parse::<Fault>(), Ok(fault));
            }
        }
        assert_eq!(
            "crash-after:switch_dns".parse::<Fault>(),
            Ok(Fault {
                action: FaultAction::Crash,
                at: FaultPoint::StepDone(Step::SwitchDns)
            })
        );
        let unknown = "crash-after:nowhere".parse::<Fault>().unwrap_err();
        assert!(
            unknown.contains("known: intent, preflight, fence"),
            "{unknown}"
        );
        assert!("crash:promoted".parse::<Fault>().is_err());
    }
}
