//! Counts in this process, for the `memory` store: one total per counter for the current
//! window, in bounded memory.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Counter name -> (window start, tokens used in it).
#[derive(Debug)]
pub struct Memory {
    counts: Mutex<HashMap<String, (u64, u64)>>,
    max_keys: usize,
}

impl Memory {
    /// At most `max_keys` counters.
    pub fn new(max_keys: usize) -> Memory {
        Memory {
            counts: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// The totals of `names` in the window starting at `start`.
    pub fn totals(&self, names: &[String], start: u64) -> Vec<u64> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        names
            .iter()
            .map(|name| match counts.get(name) {
                Some(&(window, used)) if window == start => used,
                _ => 0,
            })
            .collect()
    }

    /// Adds `amount` to `names` in the window starting at `start`; the new totals.
    pub fn add(&self, names: &[String], start: u64, amount: u64) -> Vec<u64> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        names
            .iter()
            .map(|name| {
                if !counts.contains_key(name) && counts.len() >= self.max_keys {
                    make_room(&mut counts, start, self.max_keys);
                }
                let entry = counts.entry(name.clone()).or_insert((start, 0));
                if entry.0 != start {
                    *entry = (start, 0);
                }
                entry.1 = entry.1.saturating_add(amount);
                entry.1
            })
            .collect()
    }

    /// Counters tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.counts.lock().map_or(0, |c| c.len())
    }
}

/// Drops counters of past windows; if that frees nothing, the smallest eighth (losing the
/// fewest counted tokens), so a flood of new consumers cannot wipe a heavy user's count.
fn make_room(counts: &mut HashMap<String, (u64, u64)>, start: u64, max: usize) {
    counts.retain(|_, (window, _)| *window == start);
    if counts.len() < max {
        return;
    }
    let mut used: Vec<u64> = counts.values().map(|&(_, used)| used).collect();
    let evict = (used.len() / 8).max(1);
    let (_, cutoff, _) = used.select_nth_unstable(evict - 1);
    let cutoff = *cutoff;
    let mut left = evict;
    counts.retain(|_, &mut (_, used)| {
        if left > 0 && used <= cutoff {
            left -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reset_with_the_window_and_stay_bounded() {
        let memory = Memory::new(16);
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(memory.add(&names(&["a", "a:m"]), 100, 10), [10, 10]);
        assert_eq!(memory.add(&names(&["a"]), 100, 5), [15]);
        assert_eq!(memory.totals(&names(&["a", "a:m", "b"]), 100), [15, 10, 0]);
        assert_eq!(memory.totals(&names(&["a"]), 160), [0], "a new window");
        assert_eq!(memory.add(&names(&["a"]), 160, 1), [1]);
        memory.add(&names(&["heavy"]), 160, 1_000_000);
        for i in 0..1000 {
            memory.add(&[format!("new-{i}")], 160, 1);
        }
        assert!(memory.len() <= 16, "{}", memory.len());
        assert_eq!(
            memory.totals(&names(&["heavy"]), 160),
            [1_000_000],
            "a flood of small consumers does not evict the heavy one"
        );
    }
}
