//! TLS: sslmode require / verify-ca / verify-full against a server with a certificate made for
//! the test.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::support::{TestDb, partwarden, path_str, tls_server};

/// A CA, and a server certificate for `localhost` signed by it. Writes `ca.pem`, `server.crt`,
/// `server.key` into `dir`; returns nothing else.
fn make_certs(dir: &Path, ca_name: &str) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

#[tokio::test]
async fn verify_full_accepts_the_right_name_and_refuses_a_wrong_one() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), "partwarden test CA");
    let server = tls_server(certs.path());
    let db = TestDb::on(&server, "tls").await;
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path(), "some other CA");
    let ca = certs.path().join("ca.pem");
    let run = |name: &str, conn: String, mode: &str| {
        let path = db.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, format!("[database]\nurl = \"{conn}\"\nconnect_timeout = \"5s\"\n[maintenance]\narchive_dir = \"archive\"\n")).unwrap();
        partwarden(&["--config", path_str(&path), mode], &[])
    };
    let url = |host: &str, extra: &str| {
        format!(
            "host={host} port={} user=postgres dbname={} {extra}",
            server.port, db.name
        )
    };

    let (code, out, err) = run(
        "full",
        url(
            "localhost",
            &format!("sslmode=verify-full sslrootcert={}", ca.display()),
        ),
        "--bootstrap",
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(
        "full",
        url(
            "localhost",
            &format!("sslmode=verify-full sslrootcert={}", ca.display()),
        ),
        "--check",
    );
    assert!(code <= 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("OK   connection") && l.contains("TLS TLSv1.3")),
        "{out}"
    );

    // 127.0.0.1 is not a name on the certificate.
    let (code, out, err) = run(
        "wrong_name",
        url(
            "127.0.0.1",
            &format!("sslmode=verify-full sslrootcert={}", ca.display()),
        ),
        "--run-once",
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("cannot connect") && err.contains("not valid for name"),
        "{err}"
    );

    // verify-ca checks the chain only; require (no root) only encrypts.
    let (code, out, err) = run(
        "ca",
        url(
            "127.0.0.1",
            &format!("sslmode=verify-ca sslrootcert={}", ca.display()),
        ),
        "--run-once",
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run("require", url("127.0.0.1", "sslmode=require"), "--run-once");
    assert_eq!(code, 0, "{out}{err}");

    // A certificate from another CA is refused, even with the right name.
    let wrong_ca = other.path().join("ca.pem");
    let (code, _, err) = run(
        "wrong_ca",
        url(
            "localhost",
            &format!("sslmode=verify-full sslrootcert={}", wrong_ca.display()),
        ),
        "--run-once",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );

    // verify-full without a root is a configuration error.
    let (code, _, err) = run(
        "no_root",
        url("localhost", "sslmode=verify-full"),
        "--run-once",
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("needs sslrootcert"), "{err}");
    server.stop();
}
