//! The requests in the worker's hands, and why one is not taken on twice.
//!
//! A normal take never returns a claimed request, so the ids in flight suffice for it. A
//! recovering take (after a lost take) returns every claimed request, and it is a snapshot:
//! a request it lists may be answered and delivered while its reply travels, and would
//! then be forwarded again. So while a recovering take is out, the ids finished meanwhile
//! are kept, and its reply's copies of them are dropped.

use std::collections::HashSet;
use std::sync::Mutex;

/// Ids taken and not yet delivered, and those finished during a recovering take.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    taken: HashSet<String>,
    /// `Some` while a recovering take is out: what was finished since it was sent.
    finished_during_recovery: Option<HashSet<String>>,
}

impl InFlight {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// Marks `id` in flight; false if it already is, or was answered while the recovering
    /// take that returned it was out.
    pub(super) fn admit(&self, id: &str) -> bool {
        self.with(|s| {
            let answered = s
                .finished_during_recovery
                .as_ref()
                .is_some_and(|f| f.contains(id));
            !answered && s.taken.insert(id.to_owned())
        })
    }

    /// `id` is answered (or given up on); false if it was not in hand.
    pub(super) fn finish(&self, id: &str) -> bool {
        self.with(|s| {
            let was = s.taken.remove(id);
            if was {
                if let Some(finished) = s.finished_during_recovery.as_mut() {
                    finished.insert(id.to_owned());
                }
            }
            was
        })
    }

    /// A recovering take is about to be sent.
    pub(super) fn recovery_sent(&self) {
        self.with(|s| s.finished_during_recovery = Some(HashSet::new()));
    }

    /// The recovering take's reply has been admitted (or the take failed).
    pub(super) fn recovery_done(&self) {
        self.with(|s| s.finished_during_recovery = None);
    }

    /// Forgets everything (the worker is stopping and abandons what is left).
    pub(super) fn clear(&self) {
        self.with(|s| s.taken.clear());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_answered_while_a_recovering_take_was_out_is_not_taken_again() {
        let f = InFlight::default();
        assert!(f.admit("r1"));
        f.recovery_sent();
        // The recovering take's snapshot lists r1; r1 is answered before the reply is read.
        f.finish("r1");
        assert!(!f.admit("r1"), "r1 would be forwarded twice");
        f.recovery_done();
    }

    #[test]
    fn in_flight_ids_are_refused_and_finished_ones_outside_recovery_come_back() {
        let f = InFlight::default();
        assert!(f.admit("r1"));
        assert!(!f.admit("r1"));
        f.finish("r1");
        // Outside a recovery a request seen again is a new take of a still-queued request
        // (a safe one re-sent after a restart, say): the claim rules decide, not memory.
        assert!(f.admit("r1"));
    }
}
