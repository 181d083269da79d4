//! The command line writing to a reader that went away (`hearth … | head`) ends quietly: no
//! panic, no stack trace, the exit status a shell gives a process ended by SIGPIPE (141).

use std::process::{Command, Stdio};

/// Runs `hearth args` on `dir` with stdout a pipe whose read end is already closed, so its
/// first write fails with EPIPE: a FIFO opened for reading and writing (which does not block on
/// Linux), opened again for writing, then the first descriptor closed. Answers (exit code,
/// stderr).
fn run_into_closed_pipe(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let fifo = dir.join("closed.fifo");
    let script = r#"f="$1"; shift; rm -f "$f"; mkfifo "$f" || exit 90
        exec 3<>"$f"; exec 4>"$f"; exec 3<&-
        "$@" >&4"#;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&fifo)
        .arg(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_DATA_DIR", dir)
        .env("HEARTH_STORE", "sqlite")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn commands_printing_into_a_closed_pipe_end_quietly() {
    let dir = tempfile::tempdir().unwrap();
    for domain in ["alice.localhost:8080", "bob.localhost:8080", "carol.localhost:8080"] {
        let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["instances", "add", domain, "--passphrase", "pa"])
            .env("HEARTH_DATA_DIR", dir.path())
            .env("HEARTH_STORE", "sqlite")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for args in [
        &["instances", "ls"][..],
        &["instances", "ls", "--json"],
        &["sharings", "ls", "alice.localhost:8080"],
        &["sharings", "ls", "alice.localhost:8080", "--json"],
    ] {
        let (code, stderr) = run_into_closed_pipe(dir.path(), args);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(code, Some(141), "{args:?}: {stderr}");
    }
    // Into a reader that stays, the same commands succeed and print.
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["instances", "ls"])
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_STORE", "sqlite")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("carol.localhost:8080"));
}
