//! TLS to PostgreSQL, through rustls, with libpq's `sslmode` meanings.
//!
//! tokio-postgres understands `sslmode` disable, prefer and require only, and leaves the
//! certificate checks to the TLS connector. This module takes `sslmode` and `sslrootcert` out of
//! the connection string (URL query or key=value) and builds the connector:
//!
//! | sslmode | encryption | certificate chain | host name |
//! |---|---|---|---|
//! | disable | never | - | - |
//! | prefer (default) | if the server offers it | not checked | not checked |
//! | require | always | checked when `sslrootcert` is given (as libpq does) | not checked |
//! | verify-ca | always | checked against `sslrootcert` | not checked |
//! | verify-full | always | checked against `sslrootcert` | must match the host connected to |

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;

use crate::connstr;

/// libpq's sslmode values that partwarden supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it; no certificate checks.
    Prefer,
    /// TLS; chain checked only when a root certificate is given.
    Require,
    /// TLS; chain checked.
    VerifyCa,
    /// TLS; chain and host name checked.
    VerifyFull,
}

/// The TLS settings of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`, `prefer` when absent.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted CA certificates.
    pub root_cert: Option<String>,
}

/// Removes `sslmode` and `sslrootcert` from a URL or key=value connection string. Returns the
/// rest (for tokio-postgres) and the settings, or an error naming the bad value.
pub fn split(conn: &str) -> Result<(String, TlsSettings), String> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key {
            "sslmode" => {
                mode = Some(match value {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                        ));
                    }
                });
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(value.to_string());
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if connstr::is_url(conn) {
        match connstr::url_query_start(conn).map(|q| (&conn[..q], &conn[q + 1..])) {
            None => conn.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v, raw) in connstr::key_values(conn) {
            if !take(&k, &v)? {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    Ok((
        rest,
        TlsSettings {
            mode: mode.unwrap_or(SslMode::Prefer),
            root_cert: root,
        },
    ))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TlsSettings {
    /// The mode tokio-postgres negotiates with.
    pub fn pg_mode(&self) -> PgSslMode {
        match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        }
    }

    /// The rustls client configuration, or `None` for `disable`. Errors name the root
    /// certificate file and what is wrong with it.
    pub fn client_config(&self) -> Result<Option<rustls::ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &self.root_cert {
            Some(path) => Some(load_roots(path)?),
            None => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, roots) {
            (SslMode::Disable, _) => return Ok(None),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(format!(
                    "sslmode={} needs sslrootcert=<file of trusted CA certificates (PEM)>",
                    if self.mode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
                ));
            }
            (SslMode::Prefer, _) | (SslMode::Require, None) => {
                Arc::new(NoVerification(provider.clone()))
            }
            (SslMode::VerifyFull, Some(roots)) => webpki(roots, &provider)?,
            (SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
                Arc::new(ChainOnly(webpki(roots, &provider)?))
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(config))
    }
}

fn load_roots(path: &str) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut store = RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {path}: no certificate in it"));
    }
    Ok(store)
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("TLS set-up: {e}"))
}

/// `prefer`, `require` without a root: encryption without authentication, as libpq does.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_url_and_key_value_forms() {
        let (rest, s) = split("postgresql://u@db/odds?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x").unwrap();
        assert_eq!(rest, "postgresql://u@db/odds?application_name=x");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (rest, s) =
            split("host=db sslmode=require user=u password='a b' sslrootcert='/x y.pem'").unwrap();
        assert_eq!(rest, "host=db user=u password='a b'");
        assert_eq!(s.mode, SslMode::Require);
        assert_eq!(s.root_cert.as_deref(), Some("/x y.pem"));
        let (rest, s) = split("postgresql://u@db/odds").unwrap();
        assert_eq!(
            (rest.as_str(), s.mode),
            ("postgresql://u@db/odds", SslMode::Prefer)
        );
        assert!(
            split("host=db sslmode=paranoid")
                .unwrap_err()
                .contains("paranoid")
        );
    }

    /// The query of a URL starts at the first `?` after the credentials, as tokio-postgres
    /// reads it: a `?` in the password silently dropped `sslmode=require` to `prefer`.
    #[test]
    fn a_question_mark_in_the_password_does_not_eat_sslmode() {
        let (rest, s) =
            split("postgresql://app:pa?ss@db/odds?sslmode=require&application_name=x").unwrap();
        assert_eq!(rest, "postgresql://app:pa?ss@db/odds?application_name=x");
        assert_eq!(s.mode, SslMode::Require);
        let (rest, s) = split("postgresql://app:pa?ss@db/odds").unwrap();
        assert_eq!(rest, "postgresql://app:pa?ss@db/odds");
        assert_eq!(s.mode, SslMode::Prefer);
    }

    #[test]
    fn verify_modes_need_a_root() {
        let s = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: None,
        };
        assert!(s.client_config().unwrap_err().contains("needs sslrootcert"));
        let s = TlsSettings {
            mode: SslMode::Disable,
            root_cert: None,
        };
        assert!(s.client_config().unwrap().is_none());
    }
}
