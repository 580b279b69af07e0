//! Ctrl-C, SIGTERM and SIGHUP held back while PgBouncer's clients are paused: the RESUME comes
//! first. A signal that arrives meanwhile is raised again once the hold ends (its default
//! action ends the process), so an operator's Ctrl-C, or a closed SSH session, during a
//! switchover stops pgnomad a moment later instead of leaving every client of the cluster
//! waiting on a PAUSE no one will lift.

use std::sync::atomic::{AtomicI32, Ordering};

const HELD: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The last held signal that arrived; 0 for none.
static ARRIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember(signal: libc::c_int) {
    ARRIVED.store(signal, Ordering::SeqCst);
}

/// While it lives, the held signals are only remembered; dropping it puts the previous
/// handlers back and raises the one that arrived.
#[must_use = "the signals are held only until this is dropped"]
pub struct Hold {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

pub fn hold() -> Hold {
    let mut previous = Vec::new();
    for signal in HELD {
        // SAFETY: plain sigaction calls with zeroed structs; the handler only stores an atomic,
        // which is async-signal-safe. SA_RESTART keeps the admin-console and HTTP calls of the
        // pause going rather than failing with EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = remember as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, &action, &mut old) == 0 {
                previous.push((signal, old));
            }
        }
    }
    Hold { previous }
}

impl Drop for Hold {
    fn drop(&mut self) {
        for (signal, old) in self.previous.iter().rev() {
            // SAFETY: puts back the action sigaction returned for this signal.
            unsafe {
                libc::sigaction(*signal, old, std::ptr::null_mut());
            }
        }
        let arrived = ARRIVED.swap(0, Ordering::SeqCst);
        if arrived != 0 {
            // SAFETY: raising a signal is always sound; its handler is the one from before.
            unsafe {
                libc::raise(arrived);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_during_the_hold_is_remembered_and_raised_once_it_ends() {
        // SIGHUP's handler after the hold: one that counts (the default would end the tests).
        static SEEN: AtomicI32 = AtomicI32::new(0);
        extern "C" fn count(_: libc::c_int) {
            SEEN.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: installs a counting handler for SIGHUP in this test process.
        unsafe {
            libc::signal(libc::SIGHUP, count as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
        let held = hold();
        // SAFETY: raising SIGHUP, whose handler now only remembers it.
        unsafe {
            libc::raise(libc::SIGHUP);
        }
        assert_eq!(SEEN.load(Ordering::SeqCst), 0, "delivered during the hold");
        drop(held);
        assert_eq!(SEEN.load(Ordering::SeqCst), 1, "not raised again after the hold");
    }
}
