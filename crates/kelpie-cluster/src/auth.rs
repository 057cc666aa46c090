//! Mutual authentication of transport connections, sans-IO: every node of a
//! cluster holds the same secret and proves it on each connection before a
//! single request is read.
//!
//! The handshake, in three messages (each of fixed size):
//! 1. client → server: `HELLO_MAGIC` ‖ client nonce (32 bytes);
//! 2. server → client: server nonce (32) ‖ HMAC-SHA256(secret, "kelpie server" ‖
//!    client nonce ‖ server nonce);
//! 3. client → server: HMAC-SHA256(secret, "kelpie client" ‖ server nonce ‖
//!    client nonce).
//!
//! Each side checks the other's proof in constant time and closes the
//! connection on a wrong one; a proof binds both fresh nonces, so a recorded
//! handshake cannot be replayed, and the two labels keep a server's proof
//! from serving as a client's. What this does not give: confidentiality
//! or integrity of the frames after the handshake (an attacker who can
//! inject into an established TCP stream on the cluster network is not
//! stopped); that needs TLS, which is not built.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Opens every authenticated connection, so a peer speaking another
/// protocol (or an unauthenticated node) is told apart at once.
pub const HELLO_MAGIC: &[u8; 8] = b"KELPIEA1";
pub const NONCE_BYTES: usize = 32;
pub const PROOF_BYTES: usize = 32;
/// The client's first message.
pub const HELLO_BYTES: usize = HELLO_MAGIC.len() + NONCE_BYTES;
/// The server's answer.
pub const CHALLENGE_BYTES: usize = NONCE_BYTES + PROOF_BYTES;
/// Longest a handshake may take, from connect to the last message, in ms.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 2_000;

const SERVER_LABEL: &[u8] = b"kelpie server";
const CLIENT_LABEL: &[u8] = b"kelpie client";

/// The secret every node of a cluster shares. Never printed.
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

impl ClusterSecret {
    pub fn new(secret: &[u8]) -> Self {
        assert!(!secret.is_empty(), "a cluster secret is not empty (the config checks its length)");
        ClusterSecret(secret.into())
    }

    fn proof(&self, label: &[u8], first: &[u8; NONCE_BYTES], second: &[u8; NONCE_BYTES]) -> Mac256 {
        let mut mac = Mac256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(first);
        mac.update(second);
        mac
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<set>)")
    }
}

type Mac256 = Hmac<Sha256>;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the peer did not open with the cluster handshake (another protocol, or a node without a cluster secret)")]
    NotAHandshake,
    #[error("the peer's proof is wrong: it does not hold this cluster's secret")]
    WrongProof,
}

/// The client's side: its nonce, kept to check the server's answer.
pub struct ClientHandshake {
    secret: ClusterSecret,
    nonce: [u8; NONCE_BYTES],
}

impl ClientHandshake {
    /// Starts a handshake with a fresh `nonce`; the first message to send.
    pub fn start(secret: ClusterSecret, nonce: [u8; NONCE_BYTES]) -> (Self, [u8; HELLO_BYTES]) {
        let mut hello = [0u8; HELLO_BYTES];
        hello[..HELLO_MAGIC.len()].copy_from_slice(HELLO_MAGIC);
        hello[HELLO_MAGIC.len()..].copy_from_slice(&nonce);
        (ClientHandshake { secret, nonce }, hello)
    }

    /// Checks the server's answer; the last message to send.
    pub fn answer(self, challenge: &[u8; CHALLENGE_BYTES]) -> Result<[u8; PROOF_BYTES], AuthError> {
        let (server_nonce, server_proof) = challenge.split_at(NONCE_BYTES);
        let server_nonce: &[u8; NONCE_BYTES] = server_nonce.try_into().expect("split at the nonce");
        self.secret
            .proof(SERVER_LABEL, &self.nonce, server_nonce)
            .verify_slice(server_proof)
            .map_err(|_| AuthError::WrongProof)?;
        let proof = self.secret.proof(CLIENT_LABEL, server_nonce, &self.nonce).finalize().into_bytes();
        Ok(proof.into())
    }
}

/// The server's side: both nonces, kept to check the client's proof.
pub struct ServerHandshake {
    secret: ClusterSecret,
    client_nonce: [u8; NONCE_BYTES],
    nonce: [u8; NONCE_BYTES],
}

impl ServerHandshake {
    /// Reads the client's hello; the answer to send, with a fresh `nonce`.
    pub fn accept(
        secret: ClusterSecret,
        hello: &[u8; HELLO_BYTES],
        nonce: [u8; NONCE_BYTES],
    ) -> Result<(Self, [u8; CHALLENGE_BYTES]), AuthError> {
        let (magic, client_nonce) = hello.split_at(HELLO_MAGIC.len());
        if magic != HELLO_MAGIC {
            return Err(AuthError::NotAHandshake);
        }
        let client_nonce: [u8; NONCE_BYTES] = client_nonce.try_into().expect("split at the magic");
        let proof = secret.proof(SERVER_LABEL, &client_nonce, &nonce).finalize().into_bytes();
        let mut challenge = [0u8; CHALLENGE_BYTES];
        challenge[..NONCE_BYTES].copy_from_slice(&nonce);
        challenge[NONCE_BYTES..].copy_from_slice(&proof);
        Ok((ServerHandshake { secret, client_nonce, nonce }, challenge))
    }

    /// Checks the client's proof: `Ok` and the connection may carry requests.
    pub fn finish(self, proof: &[u8; PROOF_BYTES]) -> Result<(), AuthError> {
        self.secret
            .proof(CLIENT_LABEL, &self.nonce, &self.client_nonce)
            .verify_slice(proof)
            .map_err(|_| AuthError::WrongProof)
    }
}

/// A nonce from the environment's random source (deterministic in the
/// simulator, seeded from the OS in production).
pub fn nonce(rng: &dyn kelpie_core::RngSource) -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    for chunk in nonce.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::new(text.as_bytes())
    }

    #[test]
    fn both_sides_with_one_secret_agree() {
        let (client, hello) = ClientHandshake::start(secret("sixteen bytes ok"), [1; NONCE_BYTES]);
        let (server, challenge) =
            ServerHandshake::accept(secret("sixteen bytes ok"), &hello, [2; NONCE_BYTES]).unwrap();
        let proof = client.answer(&challenge).unwrap();
        assert_eq!(server.finish(&proof), Ok(()));
    }

    #[test]
    fn a_wrong_secret_fails_on_both_sides() {
        // A server with another secret: the client refuses it.
        let (client, hello) = ClientHandshake::start(secret("sixteen bytes ok"), [1; NONCE_BYTES]);
        let (_, challenge) =
            ServerHandshake::accept(secret("another secret!!"), &hello, [2; NONCE_BYTES]).unwrap();
        assert_eq!(client.answer(&challenge).err(), Some(AuthError::WrongProof));
        // A client with another secret: the server refuses it, even when
        // the client goes on without checking the server.
        let (_, hello) = ClientHandshake::start(secret("another secret!!"), [1; NONCE_BYTES]);
        let (server, _) =
            ServerHandshake::accept(secret("sixteen bytes ok"), &hello, [2; NONCE_BYTES]).unwrap();
        let forged = secret("another secret!!").proof(CLIENT_LABEL, &[2; NONCE_BYTES], &[1; NONCE_BYTES]);
        let forged: [u8; PROOF_BYTES] = forged.finalize().into_bytes().into();
        assert_eq!(server.finish(&forged), Err(AuthError::WrongProof));
    }

    #[test]
    fn a_replayed_or_reflected_proof_fails() {
        let (client, hello) = ClientHandshake::start(secret("sixteen bytes ok"), [1; NONCE_BYTES]);
        let (server, challenge) =
            ServerHandshake::accept(secret("sixteen bytes ok"), &hello, [2; NONCE_BYTES]).unwrap();
        let proof = client.answer(&challenge).unwrap();
        // The same client proof against a server that chose another nonce.
        let (other, _) =
            ServerHandshake::accept(secret("sixteen bytes ok"), &hello, [3; NONCE_BYTES]).unwrap();
        assert_eq!(other.finish(&proof), Err(AuthError::WrongProof));
        // The server's own proof sent back as the client's.
        let reflected: [u8; PROOF_BYTES] = challenge[NONCE_BYTES..].try_into().unwrap();
        assert_eq!(server.finish(&reflected), Err(AuthError::WrongProof));
    }

    #[test]
    fn a_frame_instead_of_a_hello_is_not_a_handshake() {
        let mut frame = [0u8; HELLO_BYTES];
        frame[..4].copy_from_slice(&64u32.to_be_bytes());
        let refused = ServerHandshake::accept(secret("sixteen bytes ok"), &frame, [2; NONCE_BYTES]);
        assert_eq!(refused.err(), Some(AuthError::NotAHandshake));
        assert_eq!(format!("{:?}", secret("sixteen bytes ok")), "ClusterSecret(<set>)");
    }
}
