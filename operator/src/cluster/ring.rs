//! The consistent-hash ring that spreads WasmControllers over the ready shards (`--shard`).
//!
//! Each shard puts [`VIRTUAL_NODES`] tokens on a ring of `u64`s (the first 8 bytes of the
//! SHA-256 of `<shard>#<i>`); a key (`namespace/name` of a WasmController) belongs to the shard
//! of the first token at or after the key's own hash, wrapping around. So:
//! - every replica that sees the same set of shards computes the same owner for every key,
//!   whatever order it learnt them in and whatever version of Rust built it (SHA-256, not
//!   `std`'s hasher, whose output may change between releases: a rolling upgrade runs two
//!   builds side by side);
//! - adding a shard moves only the keys the new shard takes (about 1/N of them), removing one
//!   moves only the keys it had; nothing else changes hands.
//!
//! Pure and synchronous; `cluster/shard.rs` feeds it the ready shards.

use sha2::{Digest, Sha256};

/// Tokens per shard: with 100 (the anchor's default too), each of 2 to 8 shards named like Pods
/// got within ±20% of its fair share of 6,000 keys when measured, and the property tests hold
/// every set of up to 8 shards to ±50%; a ring change costs 100 hashes per shard.
pub const VIRTUAL_NODES: usize = 100;

/// The ring over a set of shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ring {
    /// Sorted by token, then shard index (ties between two shards' tokens are settled by name,
    /// the same way on every replica).
    tokens: Vec<(u64, usize)>,
    /// Sorted and without repeats.
    shards: Vec<String>,
}

impl Ring {
    /// The ring over `shards` (order and repeats do not matter).
    pub fn new<I, S>(shards: I) -> Ring
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut shards: Vec<String> = shards.into_iter().map(Into::into).collect();
        shards.sort();
        shards.dedup();
        let mut tokens = Vec::with_capacity(shards.len() * VIRTUAL_NODES);
        for (i, shard) in shards.iter().enumerate() {
            for v in 0..VIRTUAL_NODES {
                tokens.push((hash(&format!("{shard}#{v}")), i));
            }
        }
        tokens.sort_unstable();
        Ring { tokens, shards }
    }

    /// The shards on the ring, sorted.
    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    /// Whether `shard` is on the ring.
    pub fn contains(&self, shard: &str) -> bool {
        self.shards
            .binary_search_by(|s| s.as_str().cmp(shard))
            .is_ok()
    }

    /// The shard `key` belongs to; `None` on an empty ring.
    pub fn owner(&self, key: &str) -> Option<&str> {
        let h = hash(key);
        let i = self.tokens.partition_point(|(t, _)| *t < h);
        let (_, shard) = self.tokens.get(i).or_else(|| self.tokens.first())?;
        Some(&self.shards[*shard])
    }
}

/// The ring key of a WasmController.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn hash(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| key(&format!("team-{}", i % 37), &format!("wc-{i}")))
            .collect()
    }

    fn owners(ring: &Ring, keys: &[String]) -> Vec<String> {
        keys.iter()
            .map(|k| ring.owner(k).expect("a ring with shards").to_string())
            .collect()
    }

    #[test]
    fn an_empty_ring_has_no_owner_and_one_shard_owns_everything() {
        assert_eq!(Ring::new(Vec::<String>::new()).owner("a/b"), None);
        let ring = Ring::new(["only"]);
        assert!(keys(100).iter().all(|k| ring.owner(k) == Some("only")));
    }

    #[test]
    fn the_owner_is_the_same_whatever_order_the_shards_were_learnt_in() {
        let a = Ring::new(["r1", "r2", "r3"]);
        let b = Ring::new(["r3", "r1", "r2", "r1"]);
        assert_eq!(a, b);
        let keys = keys(500);
        assert_eq!(owners(&a, &keys), owners(&b, &keys));
    }

    #[test]
    fn owners_do_not_depend_on_the_build() {
        // Fixed expectations: a change of hash or token scheme would move WasmControllers
        // between replicas of two builds running side by side in a rolling upgrade.
        let ring = Ring::new(["wasmop-0", "wasmop-1", "wasmop-2"]);
        let got: Vec<&str> = ["team-a/website", "team-b/blog", "team-c/shop", "x/y"]
            .iter()
            .map(|k| ring.owner(k).unwrap())
            .collect();
        assert_eq!(got, ["wasmop-2", "wasmop-0", "wasmop-1", "wasmop-2"]);
    }

    /// Shards' names as replicas get them: Pod names, or short test names.
    fn shard_names() -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set("[a-z][a-z0-9-]{0,20}", 1..9)
            .prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Each of N shards gets between half and one and a half times its fair share.
        #[test]
        fn every_shard_gets_about_its_fair_share(shards in shard_names()) {
            let ring = Ring::new(shards.clone());
            let keys = keys(3000);
            let mut count: BTreeMap<String, usize> = BTreeMap::new();
            for owner in owners(&ring, &keys) {
                *count.entry(owner).or_default() += 1;
            }
            let fair = keys.len() as f64 / shards.len() as f64;
            for shard in &shards {
                let got = count.get(shard).copied().unwrap_or(0) as f64;
                prop_assert!(got >= fair * 0.5 && got <= fair * 1.5,
                    "{shard}: {got} keys, fair share {fair:.0} of {:?}", count);
            }
        }

        /// Adding a shard moves only keys to it, and about 1/(N+1) of them.
        #[test]
        fn adding_a_shard_moves_about_one_in_n_plus_one_and_only_to_it(
            shards in shard_names(), new in "[a-z][a-z0-9-]{0,20}",
        ) {
            prop_assume!(!shards.contains(&new));
            let before = Ring::new(shards.clone());
            let after = Ring::new(shards.iter().cloned().chain([new.clone()]));
            let keys = keys(3000);
            let (old, now) = (owners(&before, &keys), owners(&after, &keys));
            let moved: Vec<_> = old.iter().zip(&now).filter(|(a, b)| a != b).collect();
            prop_assert!(moved.iter().all(|(_, to)| **to == new), "a key moved between old shards");
            let share = moved.len() as f64 / keys.len() as f64;
            let fair = 1.0 / (shards.len() + 1) as f64;
            prop_assert!(share >= fair * 0.5 && share <= fair * 1.5,
                "{} of {} keys moved to {new}; fair {fair:.3}", moved.len(), keys.len());
        }

        /// Removing a shard moves exactly the keys it had.
        #[test]
        fn removing_a_shard_moves_only_its_keys(shards in shard_names(), gone in any::<prop::sample::Index>()) {
            prop_assume!(shards.len() > 1);
            let gone = gone.get(&shards).clone();
            let before = Ring::new(shards.clone());
            let after = Ring::new(shards.iter().filter(|s| **s != gone).cloned());
            let keys = keys(2000);
            for (k, (a, b)) in keys.iter().zip(owners(&before, &keys).iter().zip(owners(&after, &keys))) {
                if *a == gone {
                    prop_assert_ne!(&b, &gone, "{}", k);
                } else {
                    prop_assert_eq!(a, &b, "{} moved although its shard stayed", k);
                }
            }
        }
    }
}
