//! Archival memory: passages with embeddings, and ranking by similarity.
//!
//! The local embedding needs no network and no model: each lower-cased
//! alphanumeric word is hashed (FNV-1a, 64 bit) into one of
//! [`LOCAL_EMBEDDING_DIMENSIONS_COUNT`] buckets with a sign taken from
//! another bit of the hash, and the vector is L2-normalised. Two texts score
//! high when they share words. Its limits: no synonyms, no word order, no
//! stemming ("stone" and "stones" are different words), and collisions
//! between words grow with vocabulary. It is a default that works out of the
//! box, not a replacement for a real embedding model.
//!
//! Passages live in their agent's own key space, so ranking only ever sees
//! one agent's passages.

use serde::{Deserialize, Serialize};

/// Length of a local embedding vector.
pub const LOCAL_EMBEDDING_DIMENSIONS_COUNT: usize = 256;
/// Most results one archival search returns.
pub const ARCHIVAL_SEARCH_RESULTS_COUNT_MAX: usize = 100;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One archival passage of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    pub id: String,
    pub text: String,
    pub tags: Vec<String>,
    pub created_ms: u64,
    pub embedding: Vec<f32>,
}

fn fnv1a(word: &str) -> u64 {
    word.bytes().fold(FNV_OFFSET_BASIS, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME))
}

/// The local embedding of `text` (see the module docs); all zeros for a
/// text without words.
pub fn embed_local(text: &str) -> Vec<f32> {
    let mut vector = vec![0f32; LOCAL_EMBEDDING_DIMENSIONS_COUNT];
    let lowered = text.to_lowercase();
    for word in lowered.split(|c: char| !c.is_alphanumeric()).filter(|word| !word.is_empty()) {
        let hash = fnv1a(word);
        let bucket = (hash % LOCAL_EMBEDDING_DIMENSIONS_COUNT as u64) as usize;
        let sign = if (hash >> 63) == 0 { 1.0 } else { -1.0 };
        vector[bucket] += sign;
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: &str, text: &str) -> Passage {
        Passage {
            id: id.into(),
            text: text.into(),
            tags: vec![],
            created_ms: 0,
            embedding: embed_local(text),
        }
    }

    #[test]
    fn local_embedding_is_deterministic_and_unit_length() {
        let a = embed_local("The lighthouse key is under the blue stone.");
        assert_eq!(a, embed_local("the LIGHTHOUSE key, is under the blue stone"));
        assert_eq!(a.len(), LOCAL_EMBEDDING_DIMENSIONS_COUNT);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert!(embed_local("  ...  ").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn passages_sharing_words_rank_first() {
        use crate::index::{Code, PassageIndex};
        let texts = [
            "Ana likes chess and tea.",
            "The lighthouse key is under the blue stone.",
            "Bo plays the violin.",
        ];
        let mut index = PassageIndex::new();
        for (seq, text) in texts.iter().enumerate() {
            assert!(index.insert(seq as u64, &Code::of(&passage("p", text).embedding).unwrap()));
        }
        let nearest = |query: &str| index.search(&Code::of(&embed_local(query)).unwrap(), 2);
        assert_eq!(nearest("where is the lighthouse key")[0].0, 1);
        assert_eq!(nearest("chess")[0].0, 0);
    }
}
