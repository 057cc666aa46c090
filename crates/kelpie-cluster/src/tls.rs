//! Optional TLS of the cluster transport (rustls on ring): every node holds
//! the cluster's certificate and key, and the certificate authority that
//! issued it; a connection is encrypted and its server proven to hold a
//! certificate of that authority naming [`CLUSTER_TLS_SERVER_NAME`]. The
//! secret's handshake (`auth.rs`) still runs inside, so a client is proven
//! too. Without TLS, frames travel in clear after the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name every node's certificate must carry (a DNS subject alternative
/// name), whatever its address: one certificate can serve the whole
/// cluster, and a node's address can change.
pub const CLUSTER_TLS_SERVER_NAME: &str = "kelpie-cluster";

/// A byte stream of the transport: plain TCP or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

/// What a node needs for TLS, read once at start-up.
#[derive(Clone)]
pub struct ClusterTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

/// Why the TLS files could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster TLS: {what} {path}: {reason}")]
pub struct TlsConfigError {
    pub what: &'static str,
    pub path: String,
    pub reason: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClusterTls {
    /// Reads the node's certificate chain and private key and the
    /// authority's certificates (PEM files).
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<ClusterTls, TlsConfigError> {
        let failed = |what: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |reason: String| TlsConfigError { what, path, reason }
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect())
            .map_err(|err| failed("certificate", cert)(err.to_string()))?;
        if chain.is_empty() {
            return Err(failed("certificate", cert)("no certificate in the file".into()));
        }
        let private =
            PrivateKeyDer::from_pem_file(key).map_err(|err| failed("private key", key)(err.to_string()))?;
        let mut roots = RootCertStore::empty();
        let authorities: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect())
            .map_err(|err| failed("authority", ca)(err.to_string()))?;
        for authority in authorities {
            roots.add(authority).map_err(|err| failed("authority", ca)(err.to_string()))?;
        }
        if roots.is_empty() {
            return Err(failed("authority", ca)("no certificate in the file".into()));
        }
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| failed("certificate", cert)(err.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|err| failed("certificate and key", cert)(err.to_string()))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| failed("authority", ca)(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClusterTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server's side: TLS over an accepted connection.
    pub(crate) async fn accept(&self, stream: TcpStream) -> std::io::Result<BoxStream> {
        Ok(Box::new(self.acceptor.accept(stream).await?))
    }

    /// The client's side: TLS over a fresh connection, the server proven
    /// to hold a certificate of the cluster's authority.
    pub(crate) async fn connect(&self, stream: TcpStream) -> std::io::Result<BoxStream> {
        let name = ServerName::try_from(CLUSTER_TLS_SERVER_NAME).expect("a valid DNS name");
        Ok(Box::new(self.connector.connect(name, stream).await?))
    }
}
