//! The one TLS client setup and the one connector both OTLP transports
//! use: `tls:` settings become a rustls client configuration, and a
//! connection is plain TCP or TLS over TCP depending on the endpoint's
//! scheme — the same rules for OTLP/gRPC and OTLP/HTTP.
//!
//! Promises: server certificates are verified against the system roots
//! (or `tls.ca_file`) unless `tls.insecure_skip_verify` says otherwise;
//! the client key is read through the careful secret reader (regular file,
//! not a symlink, ours, 0600) and never logged; connecting never blocks a
//! runtime worker (all I/O is async).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::OtlpError;
use super::config::TlsConfig;

/// A rustls client configuration for `tls`, offering `alpn` (`h2` for
/// gRPC, `http/1.1` for OTLP/HTTP).
pub fn client_config(tls: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, OtlpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| OtlpError::Tls(e.to_string()))?;
    let builder = if tls.insecure_skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        match &tls.ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| OtlpError::Tls(format!("cannot read {}: {e}", ca.display())))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| OtlpError::Tls(format!("{}: {e}", ca.display())))?;
                    roots.add(cert).map_err(|e| OtlpError::Tls(format!("{}: {e}", ca.display())))?;
                }
                if roots.is_empty() {
                    return Err(OtlpError::Tls(format!("{} holds no PEM certificate", ca.display())));
                }
            }
            None => {
                // Unreadable system certificates are skipped, as every TLS
                // client does; an empty store fails at the first handshake
                // with a clear "unknown issuer".
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert)
                .map_err(|e| OtlpError::Tls(format!("cannot read {}: {e}", cert.display())))?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| OtlpError::Tls(format!("{}: {e}", cert.display())))?;
            let secret = varta_secrets::read_secret_pem(key)
                .map_err(|e| OtlpError::Tls(format!("tls.key_file: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(secret.as_bytes())
                .map_err(|_| OtlpError::Tls(format!("{} holds no PEM private key", key.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| OtlpError::Tls(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Accepts every server certificate (`tls.insecure_skip_verify`), while
/// still checking that the handshake is signed by the presented key.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to the backend: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connects to `uri`'s host and port (default 443 for `https`, 80 for
/// `http`), with TLS when `tls` is given.
pub async fn connect(uri: &Uri, tls: Option<&Arc<ClientConfig>>) -> io::Result<Stream> {
    let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
    // `[::1]` in a URI is `::1` to the resolver and the TLS name.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some(config) => {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = TlsConnector::from(config.clone()).connect(name, tcp).await?;
            Ok(Stream::Tls(Box::new(stream)))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A tower connector for tonic: every connection goes through [`connect`]
/// with the exporter's TLS settings (tonic sees a plaintext `http://`
/// channel; TLS, when wanted, is done here).
#[derive(Clone)]
pub struct Connector {
    pub tls: Option<Arc<ClientConfig>>,
    /// The configured endpoint (its host is the TLS server name).
    pub target: Uri,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").field("tls", &self.tls.is_some()).field("target", &self.target).finish()
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Connecting {
        let (target, tls) = (self.target.clone(), self.tls.clone());
        Box::pin(async move { connect(&target, tls.as_ref()).await.map(TokioIo::new) })
    }
}
