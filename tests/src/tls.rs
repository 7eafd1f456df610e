//! Certificates for the TLS tests, made with the openssl command.

use crate::peer::{TempDir, require_program};

/// In `dir`: a CA (`ca.pem`), a server certificate for `sni` signed by it
/// (`server.pem`, `server.key`), and a second CA
/// (`other-ca.pem`) the server has nothing to do with.
pub fn certificates(dir: &TempDir, sni: &str) {
    require_program("openssl");
    let run = |args: &[&str]| {
        let mut all = vec!["openssl"];
        all.extend(args);
        let out = std::process::Command::new(all[0])
            .args(&all[1..])
            .current_dir(&dir.path)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "{all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subject) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN={ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject,
        ]);
        run(&args);
    }
    let subject = format!("/CN={sni}");
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &subject,
    ]);
    run(&args);
    std::fs::write(
        dir.path.join("san.ext"),
        format!("subjectAltName=DNS:{sni}\n"),
    )
    .expect("san");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}
