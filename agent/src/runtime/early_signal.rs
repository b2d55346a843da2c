//! A SIGTERM, SIGINT or SIGHUP that a container's init gets before it handles it: held, and sent once it does.
//!
//! The init is PID 1 of its pid namespace, and the kernel drops every signal such a process
//! has no handler for (SIG_DFL), even from the agent in the ancestor namespace (only SIGKILL
//! and SIGSTOP get through). A kill sent right after StartContainer therefore reaches the
//! workload before its start-up has installed its handler, and is lost: runc's callers see it
//! work because a host process starts fast; under TCG the start-up is long. Kubernetes stops
//! containers right after starting them often (rollouts, jobs), and each such stop would then
//! wait out the grace period and end with SIGKILL.
//!
//! So within [`HOLD_WINDOW`] after start, such a signal is not sent into the void: the agent
//! holds it and sends it (once, through the init's pidfd) as soon as `SigCgt` in
//! `/proc/<pid>/status` shows a handler. Sending it first and again later would risk a
//! second delivery when the handler appears between the status read and the send; holding it
//! delivers it exactly once. A signal the init already handles is sent at once, as before;
//! one it ignores explicitly (`SigIgn`) is sent as before (the kernel discards it) and never
//! again; past the window, or if the init exits or starts ignoring it, the held signal is
//! dropped, as the kernel would have dropped it. A second identical signal while one is held
//! is merged into it, as the kernel merges a pending standard signal.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, info, warn};

use crate::runtime::process::Process;

/// How long after StartContainer a signal the init does not handle yet is held for it.
use protocol::EARLY_SIGNAL_WINDOW as HOLD_WINDOW;
/// The signals that stop a workload and that it must install a handler to receive as PID 1.
const HELD_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// First and longest pause between two reads of the init's status while a signal is held.
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);

/// What `/proc/<pid>/status` says about a process's signal dispositions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dispositions {
    /// `SigCgt`: signals with a handler (bit n-1 for signal n).
    caught: u64,
    /// `SigIgn`: signals set to SIG_IGN.
    ignored: u64,
    /// The last `NSpid` field is 1: PID 1 of its own pid namespace.
    ns_init: bool,
}

fn bit(sig: Signal) -> u64 {
    1u64 << ((sig as i32 - 1) & 63)
}

/// Parses the `SigCgt`, `SigIgn` and `NSpid` lines of a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Result<Dispositions, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| format!("no {name} line in the process status"))
    };
    let mask = |name: &str| {
        let v = field(name)?;
        u64::from_str_radix(v, 16).map_err(|e| format!("{name} {v:?} is not a hex mask: {e}"))
    };
    Ok(Dispositions {
        caught: mask("SigCgt")?,
        ignored: mask("SigIgn")?,
        ns_init: field("NSpid")?.split_whitespace().last() == Some("1"),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it now, once: the init handles it, or the kernel would not drop it.
    Now,
    /// Hold it, and send it once the init handles it.
    WhenHandled,
    /// Explicitly ignored: send it as any signal (the kernel discards it), never again.
    Ignored,
}

/// What to do with `sig` for a container's init in state `d`, `in_window` after its start.
pub fn decide(sig: Signal, d: &Dispositions, in_window: bool) -> Decision {
    if d.ignored & bit(sig) != 0 {
        Decision::Ignored
    } else if in_window && HELD_SIGNALS.contains(&sig) && d.ns_init && d.caught & bit(sig) == 0 {
        Decision::WhenHandled
    } else {
        Decision::Now
    }
}

/// The init's start time and the signals held for it; one per container.
#[derive(Default)]
pub struct InitSignals {
    started: OnceLock<Instant>,
    /// Bits of the signals a task is holding.
    held: Arc<AtomicU64>,
}

impl InitSignals {
    /// The init has exec'd its process: the window opens.
    pub fn mark_started(&self) {
        let _ = self.started.set(Instant::now());
    }

    /// Sends `sig` to the container's init, or holds it (see the module text).
    pub async fn send(
        &self,
        container_id: &str,
        init: &Arc<Process>,
        sig: Signal,
    ) -> nix::Result<()> {
        let Some(deadline) = self.started.get().map(|t| *t + HOLD_WINDOW) else {
            return init.signal(sig);
        };
        if !HELD_SIGNALS.contains(&sig) || Instant::now() >= deadline || init.exited().is_some() {
            return init.signal(sig);
        }
        let d = match dispositions(init.pid).await {
            Ok(d) => d,
            Err(e) => {
                debug!(container = %container_id, ?sig, "sent as is: {e}");
                return init.signal(sig);
            }
        };
        if decide(sig, &d, true) != Decision::WhenHandled {
            return init.signal(sig);
        }
        if self.held.fetch_or(bit(sig), Ordering::SeqCst) & bit(sig) != 0 {
            info!(container = %container_id, ?sig, "merged into the same signal already held");
            return Ok(());
        }
        info!(
            container = %container_id, ?sig,
            "the init has no handler for the signal yet (PID 1 would drop it): held until it has one"
        );
        let (id, init, held) = (container_id.to_string(), init.clone(), self.held.clone());
        tokio::spawn(async move {
            let outcome = hold(&init, sig, deadline).await;
            // Cleared before the send: a later request for this signal is a signal of its own.
            held.fetch_and(!bit(sig), Ordering::SeqCst);
            match outcome {
                Held::Handled => match init.signal(sig) {
                    Ok(()) => info!(
                        container = %id, ?sig,
                        "the init installed its handler: held signal re-delivered"
                    ),
                    Err(e) => warn!(container = %id, ?sig, "re-delivering the held signal: {e}"),
                },
                Held::Exited => {
                    debug!(container = %id, ?sig, "held signal dropped: the init exited")
                }
                Held::Ignored => {
                    info!(container = %id, ?sig, "held signal dropped: the init now ignores it");
                }
                Held::Expired => info!(
                    container = %id, ?sig,
                    "held signal dropped: no handler within {HOLD_WINDOW:?} of start, as the kernel drops it"
                ),
            }
        });
        Ok(())
    }
}

/// How holding a signal ended.
enum Held {
    /// The init has a handler for it now: send it.
    Handled,
    Exited,
    Ignored,
    Expired,
}

/// Waits until the init handles `sig` (or exits, or ignores it), until `deadline`. The
/// kernel has no event for "a handler was installed" (rt_sigaction notifies nobody), so this
/// polls the status with a growing pause: the honest fallback, bounded by the window.
async fn hold(init: &Process, sig: Signal, deadline: Instant) -> Held {
    let mut pause = FIRST_POLL;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Held::Expired;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_POLL);
        if init.exited().is_some() {
            return Held::Exited;
        }
        // A read that fails means the process is gone (its pid is no longer in /proc).
        let Ok(d) = dispositions(init.pid).await else {
            return Held::Exited;
        };
        match decide(sig, &d, true) {
            Decision::WhenHandled => {}
            Decision::Ignored => return Held::Ignored,
            Decision::Now => return Held::Handled,
        }
    }
}

/// The dispositions of `pid`, read on the blocking pool. The pid may name a later process if
/// the init was just reaped; the signal itself goes through the init's pidfd, so that case
/// costs at most a send that fails with ESRCH (ignored by [`Process::signal`]).
async fn dispositions(pid: i32) -> Result<Dispositions, String> {
    let path = format!("/proc/{pid}/status");
    tokio::task::spawn_blocking(move || {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        parse_status(&text).map_err(|e| format!("{path}: {e}"))
    })
    .await
    .map_err(|e| format!("status reader task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status lines of busybox `top` as PID 1 of a pid namespace (SIGTERM among SigCgt).
    const TOP: &str = "Name:\ttop\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t21975\n\
        Pid:\t21975\nNSpid:\t21975\t1\nSigQ:\t1/96365\nSigPnd:\t0000000000000000\n\
        ShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n\
        SigCgt:\t0000000003807a27\nCapInh:\t0000000000000000\n";

    fn status(ns_pids: &str, ign: u64, cgt: u64) -> String {
        format!("Name:\tx\nNSpid:\t{ns_pids}\nSigIgn:\t{ign:016x}\nSigCgt:\t{cgt:016x}\n")
    }

    #[test]
    fn parses_the_masks_and_pid_namespace_init() {
        let d = parse_status(TOP).unwrap();
        assert_eq!(
            d,
            Dispositions {
                caught: 0x3807a27,
                ignored: 0,
                ns_init: true
            }
        );
        assert_ne!(d.caught & bit(Signal::SIGTERM), 0);
        assert_ne!(d.caught & bit(Signal::SIGHUP), 0);
        let d = parse_status(&status("412", 1 << 14, 0)).unwrap();
        assert!(!d.ns_init, "a process of the guest's own pid namespace");
        assert_eq!(d.ignored, bit(Signal::SIGTERM));
        let d = parse_status(&status("412\t7\t1", 0, 0)).unwrap();
        assert!(d.ns_init, "the last NSpid field is the innermost namespace");
    }

    #[test]
    fn a_status_without_the_fields_or_with_bad_masks_is_an_error() {
        let e = parse_status("Name:\tx\nNSpid:\t1\nSigIgn:\t0\n").unwrap_err();
        assert!(e.contains("SigCgt"), "{e}");
        let e = parse_status("NSpid:\t1\nSigIgn:\tzz\nSigCgt:\t0\n").unwrap_err();
        assert!(e.contains("SigIgn") && e.contains("zz"), "{e}");
        let e = parse_status("SigIgn:\t0\nSigCgt:\t0\n").unwrap_err();
        assert!(e.contains("NSpid"), "{e}");
        // "SigCgtX:" is not "SigCgt:".
        let e = parse_status("NSpid:\t1\nSigIgn:\t0\nSigCgtX:\t0\n").unwrap_err();
        assert!(e.contains("SigCgt"), "{e}");
    }

    #[test]
    fn a_handled_signal_is_sent_now_and_only_now() {
        let d = parse_status(TOP).unwrap();
        for sig in HELD_SIGNALS {
            assert_eq!(decide(sig, &d, true), Decision::Now, "{sig:?}");
        }
    }

    #[test]
    fn an_unhandled_termination_signal_to_a_namespace_init_is_held_in_the_window() {
        let d = parse_status(&status("300\t1", 0, 0)).unwrap();
        for sig in HELD_SIGNALS {
            assert_eq!(decide(sig, &d, true), Decision::WhenHandled, "{sig:?}");
            assert_eq!(
                decide(sig, &d, false),
                Decision::Now,
                "{sig:?} past the window"
            );
        }
        // Other signals are never held: SIGKILL reaches a namespace init anyway, SIGUSR1 and
        // friends are outside this behaviour.
        for sig in [
            Signal::SIGKILL,
            Signal::SIGUSR1,
            Signal::SIGQUIT,
            Signal::SIGWINCH,
        ] {
            assert_eq!(decide(sig, &d, true), Decision::Now, "{sig:?}");
        }
    }

    #[test]
    fn only_the_init_of_a_pid_namespace_is_held_for() {
        // The kernel delivers the default action to any other process: nothing to hold.
        let d = parse_status(&status("300", 0, 0)).unwrap();
        assert_eq!(decide(Signal::SIGTERM, &d, true), Decision::Now);
        let d = parse_status(&status("300\t5", 0, 0)).unwrap();
        assert_eq!(decide(Signal::SIGTERM, &d, true), Decision::Now);
    }

    #[test]
    fn an_explicitly_ignored_signal_stays_ignored() {
        let d = parse_status(&status("300\t1", bit(Signal::SIGTERM), 0)).unwrap();
        assert_eq!(decide(Signal::SIGTERM, &d, true), Decision::Ignored);
        assert_eq!(decide(Signal::SIGTERM, &d, false), Decision::Ignored);
        // Ignoring SIGTERM says nothing about SIGINT.
        assert_eq!(decide(Signal::SIGINT, &d, true), Decision::WhenHandled);
    }

    #[test]
    fn bits_follow_the_kernel_numbering() {
        assert_eq!(bit(Signal::SIGHUP), 1);
        assert_eq!(bit(Signal::SIGINT), 1 << 1);
        assert_eq!(bit(Signal::SIGTERM), 1 << 14);
    }
}
