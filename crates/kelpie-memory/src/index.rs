//! The archival search index of one agent: every passage's embedding as a
//! unit vector quantized to 8-bit integers ([`Code`]: one byte per
//! dimension and one scale), scanned whole for each query with an integer
//! dot product, the best candidates then ranked again on their exact
//! vectors by the caller. Approximate nearest neighbours by quantization,
//! not by a graph: at 100 000 passages a scan is a few milliseconds, an
//! insert or delete is O(1), nothing needs building, and the result is the
//! same on every machine (integer arithmetic; SIMD changes the speed, never
//! the sum).
//!
//! The codes are what the agent stores beside each passage; an index is
//! rebuilt from them when an agent is activated, so it never drifts from
//! the passages. Pure data and functions: no I/O.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

/// Largest code magnitude: codes are in -127..=127.
const CODE_MAGNITUDE_MAX: f32 = 127.0;
/// Longest embedding an index holds, in dimensions.
pub const INDEX_DIMENSIONS_COUNT_MAX: usize = 8_192;

/// A unit vector quantized to bytes: `scale * codes[i]` approximates its
/// component `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Code {
    pub scale: f32,
    pub codes: Vec<i8>,
}

impl Code {
    /// The code of `embedding` (normalized first); `None` for a zero, empty,
    /// non-finite or over-long vector, which no search can rank.
    pub fn of(embedding: &[f32]) -> Option<Code> {
        if embedding.is_empty() || embedding.len() > INDEX_DIMENSIONS_COUNT_MAX {
            return None;
        }
        let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return None;
        }
        let largest = embedding.iter().fold(0f32, |max, x| max.max(x.abs())) / norm;
        let scale = largest / CODE_MAGNITUDE_MAX;
        let codes = embedding.iter().map(|x| (x / norm / scale).round() as i8).collect();
        Some(Code { scale, codes })
    }

    /// `scale` (4 bytes, little-endian) then the codes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(4 + self.codes.len());
        bytes.extend_from_slice(&self.scale.to_le_bytes());
        bytes.extend(self.codes.iter().map(|&c| c as u8));
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Code> {
        let (scale, codes) = bytes.split_first_chunk::<4>()?;
        let scale = f32::from_le_bytes(*scale);
        (scale.is_finite() && scale > 0.0 && !codes.is_empty())
            .then(|| Code { scale, codes: codes.iter().map(|&b| b as i8).collect() })
    }
}

/// The integer dot product of two codes, compiled for the widest vector
/// unit the machine has.
#[multiversion::multiversion(targets("x86_64+avx2", "x86_64+sse4.1", "aarch64+neon"))]
fn dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

/// A candidate of a search: ordered by score, then by lower seq (newer
/// passages never displace older ones of the same score arbitrarily).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    seq: u64,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    /// Greater is better: a higher score, then a lower seq.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(other.seq.cmp(&self.seq))
    }
}

/// The codes of one agent's passages, by seq.
#[derive(Debug, Clone, Default)]
pub struct PassageIndex {
    dimensions: usize,
    seqs: Vec<u64>,
    scales: Vec<f32>,
    /// `dimensions` codes per passage, in the order of `seqs`.
    codes: Vec<i8>,
    slot_of: BTreeMap<u64, usize>,
}

impl PassageIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.slot_of.contains_key(&seq)
    }

    /// Bytes the index holds (its codes and bookkeeping).
    pub fn memory_bytes(&self) -> usize {
        self.codes.capacity() + self.seqs.capacity() * 12 + self.slot_of.len() * 40
    }

    /// Adds (or replaces) passage `seq`. A code of another length than the
    /// index's (an embedding of another model) is not indexed: `false`.
    pub fn insert(&mut self, seq: u64, code: &Code) -> bool {
        if self.is_empty() && self.dimensions != code.codes.len() {
            self.dimensions = code.codes.len();
        }
        if code.codes.len() != self.dimensions {
            return false;
        }
        self.remove(seq);
        self.slot_of.insert(seq, self.seqs.len());
        self.seqs.push(seq);
        self.scales.push(code.scale);
        self.codes.extend_from_slice(&code.codes);
        debug_assert_eq!(self.codes.len(), self.seqs.len() * self.dimensions);
        true
    }

    /// Removes passage `seq` (the last one takes its slot); `false` when it
    /// was not indexed.
    pub fn remove(&mut self, seq: u64) -> bool {
        let Some(slot) = self.slot_of.remove(&seq) else { return false };
        let last = self.seqs.len() - 1;
        if slot != last {
            let moved = self.seqs[last];
            self.seqs[slot] = moved;
            self.scales[slot] = self.scales[last];
            let (dims, from) = (self.dimensions, last * self.dimensions);
            self.codes.copy_within(from..from + dims, slot * dims);
            self.slot_of.insert(moved, slot);
        }
        self.seqs.pop();
        self.scales.pop();
        self.codes.truncate(last * self.dimensions);
        true
    }

    /// The `k` passages nearest `query` (a code of the same model),
    /// best first, with their approximate cosine similarity.
    pub fn search(&self, query: &Code, k: usize) -> Vec<(u64, f32)> {
        if k == 0 || query.codes.len() != self.dimensions {
            return Vec::new();
        }
        // The k best so far, the worst on top.
        let mut best: BinaryHeap<std::cmp::Reverse<Candidate>> = BinaryHeap::with_capacity(k + 1);
        for (slot, codes) in self.codes.chunks_exact(self.dimensions).enumerate() {
            let score = dot(codes, &query.codes) as f32 * self.scales[slot] * query.scale;
            let candidate = Candidate { score, seq: self.seqs[slot] };
            if best.len() < k {
                best.push(std::cmp::Reverse(candidate));
            } else if best.peek().is_some_and(|worst| candidate > worst.0) {
                best.pop();
                best.push(std::cmp::Reverse(candidate));
            }
        }
        let mut ranked: Vec<Candidate> = best.into_iter().map(|entry| entry.0).collect();
        ranked.sort_by(|a, b| b.cmp(a));
        ranked.into_iter().map(|c| (c.seq, c.score)).collect()
    }
}

/// Cosine similarity of two vectors (0 when either is zero or their
/// lengths differ: embeddings of different models never match).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut norm_a, mut norm_b) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        norm_a += x * x;
        norm_b += y * y;
    }
    match norm_a * norm_b {
        product if product > 0.0 => dot / product.sqrt(),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random vector.
    fn vector(seed: u64, dims: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..dims)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2_000) as f32 / 1_000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn codes_round_trip_and_refuse_what_cannot_rank() {
        let code = Code::of(&[3.0, -4.0]).unwrap();
        assert_eq!(code.codes, vec![95, -127]);
        assert_eq!(Code::from_bytes(&code.to_bytes()), Some(code));
        assert_eq!(Code::of(&[0.0, 0.0]), None);
        assert_eq!(Code::of(&[]), None);
        assert_eq!(Code::of(&[f32::NAN]), None);
        assert_eq!(Code::from_bytes(&[0, 0]), None);
    }

    #[test]
    fn inserts_removes_and_searches_keep_every_slot_right() {
        let mut index = PassageIndex::new();
        for seq in 0..50 {
            assert!(index.insert(seq, &Code::of(&vector(seq, 16)).unwrap()));
        }
        assert!(!index.insert(99, &Code::of(&[1.0, 2.0]).unwrap()), "another model's vector");
        for seq in (0..50).step_by(3) {
            assert!(index.remove(seq));
        }
        assert!(!index.remove(0));
        assert_eq!(index.len(), 50 - 17);
        // Each remaining passage is its own nearest neighbour.
        for seq in (0..50).filter(|s| s % 3 != 0) {
            let query = Code::of(&vector(seq, 16)).unwrap();
            let found = index.search(&query, 3);
            assert_eq!(found[0].0, seq);
            assert!(found[0].1 > 0.99 && found[0].1 >= found[1].1);
        }
        assert_eq!(index.search(&Code::of(&vector(1, 8)).unwrap(), 3), Vec::new(), "another model's query");
    }

    #[test]
    fn recall_at_ten_against_exact_cosine_is_high() {
        const DIMS: usize = 64;
        const COUNT: u64 = 2_000;
        let vectors: Vec<Vec<f32>> = (0..COUNT).map(|seq| vector(seq, DIMS)).collect();
        let mut index = PassageIndex::new();
        for (seq, v) in vectors.iter().enumerate() {
            index.insert(seq as u64, &Code::of(v).unwrap());
        }
        let mut hits = 0;
        for q in 0..50 {
            let query = vector(10_000 + q, DIMS);
            let mut exact: Vec<(u64, f32)> =
                vectors.iter().enumerate().map(|(seq, v)| (seq as u64, cosine(v, &query))).collect();
            exact.sort_by(|a, b| b.1.total_cmp(&a.1));
            let truth: Vec<u64> = exact.iter().take(10).map(|(seq, _)| *seq).collect();
            // Candidates 4 × k, re-ranked exactly, as the agent does.
            let mut candidates: Vec<(u64, f32)> = index
                .search(&Code::of(&query).unwrap(), 40)
                .into_iter()
                .map(|(seq, _)| (seq, cosine(&vectors[seq as usize], &query)))
                .collect();
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
            hits += candidates.iter().take(10).filter(|(seq, _)| truth.contains(seq)).count();
        }
        let recall = hits as f64 / 500.0;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }
}
