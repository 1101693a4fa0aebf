//! Running the `mlmf` binary from the CLI's integration tests (included with `mod run;`).

use std::process::{Command, Output};

/// `mlmf ARGS`, whatever its exit status.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(args)
        .output()
        .unwrap()
}

/// `mlmf ARGS`, which must succeed (its stderr in the message otherwise).
pub fn mlmf(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "mlmf {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
