//! The restart policy: when an error restarts the guest in place (devices quiesced, memory
//! reset, configured again from the checkpoint), how many times, and when it gives up.
//!
//! - An error (a panic, including a fatal device error, or a watchdog stall) restarts in
//!   place only while the storage service runs with `restart_on_error` armed, and at most
//!   [`MAX_RESTARTS`] times in a guest's life: a restart loop would hide the problem. Past
//!   that, or before serving, the guest stops with a failure exit.
//! - The pair protocol's restarts (fenced: the node lost its disks and must reset its devices
//!   before acknowledging; reclaim: its disks came back) always happen and are counted, but
//!   are not limited: they are the protocol working, not errors.
//! - The debug hooks that inject an error after some requests act in the first life only,
//!   so that a restart does not inject again; and the per-device start-up lines are
//!   repeated on a restart at debug level only.
//!
//! The kernel keeps the count in atomics (the panic handler and the watchdog interrupt read
//! them) and asks [`verdict`] what to do.

/// Restarts allowed for errors before an error is fatal.
pub const MAX_RESTARTS: u32 = 8;

/// What ended the life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A panic (an injected one, a failed device queue, an exception).
    Panic,
    /// The watchdog saw the service loop stall.
    Watchdog,
    /// The pair peer took this node's disks.
    Fenced,
    /// The pair peer gave this node's disks back.
    Reclaim,
}

impl Cause {
    /// The `cause=` word of the `TANDEM RESTART` line.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Panic => "panic",
            Cause::Watchdog => "watchdog",
            Cause::Fenced => "fenced",
            Cause::Reclaim => "reclaim",
        }
    }

    /// Whether it is an error (as opposed to the pair protocol asking for a restart).
    pub fn is_error(self) -> bool {
        matches!(self, Cause::Panic | Cause::Watchdog)
    }
}

/// What the kernel does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Restart in place; the count goes up by one.
    Restart,
    /// Stop with a failure exit.
    Stop(Stop),
}

/// Why the guest stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Not serving with `restart_on_error` (before the service started, or turned off).
    NotArmed,
    /// [`MAX_RESTARTS`] restarts already.
    TooMany,
}

/// What `cause` does to a guest that has restarted `restarts` times, with the restart on
/// error armed (`armed`: serving, and `restart_on_error`) or not.
pub fn verdict(cause: Cause, armed: bool, restarts: u32) -> Verdict {
    if !cause.is_error() {
        return Verdict::Restart;
    }
    if !armed {
        Verdict::Stop(Stop::NotArmed)
    } else if restarts < MAX_RESTARTS {
        Verdict::Restart
    } else {
        Verdict::Stop(Stop::TooMany)
    }
}

/// Whether `cause` counts as a restart (the kernel's counter goes up) even when the guest
/// then stops: every cause does once armed; an error before that does not.
pub fn counts(cause: Cause, armed: bool) -> bool {
    armed || !cause.is_error()
}

/// Which life of the guest this is: 0 restarts is the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    pub restarts: u32,
}

impl Life {
    pub fn first(self) -> bool {
        self.restarts == 0
    }

    /// A debug hook's setting (`debug.panic_after_requests=` and the like) as it applies
    /// to this life: only the first life injects.
    pub fn hook<T>(self, setting: Option<T>) -> Option<T> {
        setting.filter(|_| self.first())
    }

    /// Whether the per-device start-up lines are worth the console (the first start), or
    /// repeat what it printed (a restart: printed at debug level; under emulation every
    /// console byte costs a VM exit).
    pub fn verbose_start(self) -> bool {
        self.first()
    }
}

/// A failed device queue cannot be trusted with more I/O: the device is re-initialised by
/// restarting (a panic the policy above then judges).
pub fn device_failed(failures: u64) -> bool {
    failures > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_while_serving_restarts_up_to_the_limit() {
        for cause in [Cause::Panic, Cause::Watchdog] {
            for n in 0..MAX_RESTARTS {
                assert_eq!(verdict(cause, true, n), Verdict::Restart, "{cause:?} {n}");
            }
            assert_eq!(
                verdict(cause, true, MAX_RESTARTS),
                Verdict::Stop(Stop::TooMany)
            );
            assert_eq!(verdict(cause, true, u32::MAX), Verdict::Stop(Stop::TooMany));
            assert!(counts(cause, true));
        }
    }

    #[test]
    fn an_error_before_serving_or_without_restart_on_error_stops() {
        for cause in [Cause::Panic, Cause::Watchdog] {
            assert_eq!(verdict(cause, false, 0), Verdict::Stop(Stop::NotArmed));
            assert!(!counts(cause, false), "not counted: the guest stops");
        }
    }

    #[test]
    fn the_pair_protocol_restarts_always() {
        for cause in [Cause::Fenced, Cause::Reclaim] {
            for armed in [false, true] {
                assert_eq!(verdict(cause, armed, 0), Verdict::Restart);
                assert_eq!(verdict(cause, armed, 1000), Verdict::Restart);
                assert!(counts(cause, armed));
            }
        }
    }

    #[test]
    fn cause_words() {
        let words = [Cause::Panic, Cause::Watchdog, Cause::Fenced, Cause::Reclaim].map(Cause::name);
        assert_eq!(words, ["panic", "watchdog", "fenced", "reclaim"]);
    }

    #[test]
    fn debug_hooks_act_in_the_first_life_only() {
        let first = Life { restarts: 0 };
        let later = Life { restarts: 1 };
        assert!(first.first() && !later.first());
        assert_eq!(first.hook(Some(5u64)), Some(5));
        assert_eq!(later.hook(Some(5u64)), None);
        assert_eq!(first.hook(None::<u64>), None);
        assert!(first.verbose_start() && !later.verbose_start());
    }

    #[test]
    fn a_failed_queue_restarts() {
        assert!(!device_failed(0));
        assert!(device_failed(1));
    }
}
