//! The containers of a sandbox by id, and which ids this shim created in it: what the guest
//! reports about a container (an OOM kill) is believed only for those. A deleted container is
//! remembered for a short while, since the agent reports a kill it finds while removing the
//! container, which may arrive just after the Delete.

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::time::Instant;

use crate::guest_output::{OOM_AFTER_DELETE, OOM_DELETED_KEPT};

/// A map of the sandbox's containers (reads and writes as a `HashMap`), whose `remove`
/// remembers the id for [`OOM_AFTER_DELETE`], at most [`OOM_DELETED_KEPT`] of them.
#[derive(Debug)]
pub struct Members<C> {
    live: HashMap<String, C>,
    deleted: VecDeque<(String, Instant)>,
}

impl<C> Default for Members<C> {
    fn default() -> Self {
        Members {
            live: HashMap::new(),
            deleted: VecDeque::new(),
        }
    }
}

impl<C> Members<C> {
    /// Removes a container, remembering that this shim created it.
    pub fn remove(&mut self, id: &str) -> Option<C> {
        let c = self.live.remove(id)?;
        if self.deleted.len() == OOM_DELETED_KEPT {
            self.deleted.pop_front();
        }
        self.deleted.push_back((id.to_string(), Instant::now()));
        Some(c)
    }

    /// Whether this shim created container `id` in this sandbox and it is still there, or
    /// was deleted less than [`OOM_AFTER_DELETE`] before `now`.
    pub fn created(&self, id: &str, now: Instant) -> bool {
        self.live.contains_key(id)
            || self
                .deleted
                .iter()
                .any(|(d, at)| d == id && now.saturating_duration_since(*at) < OOM_AFTER_DELETE)
    }
}

impl<C> Deref for Members<C> {
    type Target = HashMap<String, C>;
    fn deref(&self) -> &Self::Target {
        &self.live
    }
}

impl<C> DerefMut for Members<C> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_created_containers_and_recently_deleted_ones_count() {
        let mut m: Members<u32> = Members::default();
        m.insert("c1".into(), 1);
        let now = Instant::now();
        assert!(m.created("c1", now));
        assert!(!m.created("forged", now));
        assert_eq!(m.remove("c1"), Some(1));
        assert!(m.is_empty());
        assert!(m.created("c1", Instant::now()), "just deleted");
        assert!(!m.created("c1", Instant::now() + OOM_AFTER_DELETE));
        // Removing what is not there remembers nothing.
        assert_eq!(m.remove("forged"), None);
        assert!(!m.created("forged", Instant::now()));
    }

    #[test]
    fn the_memory_of_deleted_containers_is_bounded() {
        let mut m: Members<u32> = Members::default();
        for n in 0..OOM_DELETED_KEPT * 3 {
            m.insert(format!("c{n}"), 0);
            m.remove(&format!("c{n}"));
        }
        assert_eq!(m.deleted.len(), OOM_DELETED_KEPT);
        let now = Instant::now();
        assert!(m.created(&format!("c{}", OOM_DELETED_KEPT * 3 - 1), now));
        assert!(!m.created("c0", now));
    }
}
