//! One real cluster at a time in this test process.
//!
//! Every test that brings up a whole stack (a `pgnomad dev` cluster of real processes, or the
//! cluster double's containers) holds the slot while it runs. On CI's two cores two such
//! stacks side by side drove the load average to 50–90, and bootstraps, failovers and
//! restores outlasted their deadlines in ways no user's machine would show. The light tests
//! still run beside them. The slot is re-entrant on one thread, so a test that holds it can
//! bring up a second cluster (a clone beside its source).

#![allow(dead_code)]

use std::sync::{Condvar, Mutex};
use std::thread::ThreadId;

struct Holder {
    thread: Option<ThreadId>,
    depth: usize,
}

static HOLDER: Mutex<Holder> = Mutex::new(Holder { thread: None, depth: 0 });
static FREED: Condvar = Condvar::new();

/// Held until dropped; see the module's doc.
pub struct ClusterSlot(());

pub fn one_cluster_at_a_time() -> ClusterSlot {
    let me = std::thread::current().id();
    let mut holder = HOLDER.lock().unwrap_or_else(|p| p.into_inner());
    while holder.thread.is_some_and(|t| t != me) {
        holder = FREED.wait(holder).unwrap_or_else(|p| p.into_inner());
    }
    holder.thread = Some(me);
    holder.depth += 1;
    ClusterSlot(())
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        let mut holder = HOLDER.lock().unwrap_or_else(|p| p.into_inner());
        holder.depth -= 1;
        if holder.depth == 0 {
            holder.thread = None;
            FREED.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_slot_is_reentrant_on_its_thread_and_exclusive_across_threads() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let outer = super::one_cluster_at_a_time();
        let inner = super::one_cluster_at_a_time();
        let entered = Arc::new(AtomicBool::new(false));
        let other = {
            let entered = entered.clone();
            std::thread::spawn(move || {
                let _slot = super::one_cluster_at_a_time();
                entered.store(true, Ordering::SeqCst);
            })
        };
        drop(inner);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!entered.load(Ordering::SeqCst), "another thread took the slot while it was held");
        drop(outer);
        other.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
    }
}
