//! Runs a test of this test binary as MPI ranks: `mpirun -np N <this binary> --exact <worker>`,
//! with a timeout, and collects what each rank reported. Include it from an MPI test file
//! (`#![cfg(feature = "mpi")]`) with `mod mpi_harness;` (or `#[path]` from another crate).
//!
//! A worker is an ordinary `#[test]` that starts with `if !mpi_harness::is_worker() { return; }`
//! (it may also be `#[ignore]`d: the harness includes ignored tests), runs on every rank, and
//! reports with [`report`]; the spawning test asserts on [`MpiRun::rank_lines`].
//!
//! Open MPI's settings for a container on loopback, for the test suite only, are in
//! `tests/common/mpirun.rs`.
#![allow(dead_code)]

#[path = "../../../../tests/common/mpirun.rs"]
mod mpirun;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Set in the environment of the ranks the harness starts.
pub const WORKER_VAR: &str = "MLMF_MPI_WORKER";

/// The prefix of [`report`]'s lines.
const TAG: &str = "MLMF-RANK ";

/// Whether this process is a rank started by [`mpirun`] (else a worker test returns at once).
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_VAR).is_some()
}

/// Prints one line of this rank's report, tagged with its rank, for [`MpiRun::rank_lines`].
pub fn report(rank: usize, line: &str) {
    // One write starting on a fresh line: libtest's "test name ... " has no newline, and
    // mpirun forwards each rank's output as it comes.
    print!("\n{TAG}{rank}: {line}\n");
}

/// What `mpirun` did.
pub struct MpiRun {
    pub np: usize,
    pub worker: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

impl MpiRun {
    /// The lines rank `rank` gave [`report`], in order.
    pub fn rank_lines(&self, rank: usize) -> Vec<&str> {
        let prefix = format!("{TAG}{rank}: ");
        self.stdout
            .lines()
            .filter_map(|line| {
                line.find(prefix.as_str())
                    .map(|at| &line[at + prefix.len()..])
            })
            .collect()
    }

    /// Everything, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "mpirun -np {} {}: {} after {:.1} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.np, self.worker, self.status, self.seconds, self.stdout, self.stderr
        )
    }

    /// Panics with the whole output unless `mpirun` exited with 0.
    pub fn assert_success(&self) {
        assert!(self.status.success(), "{}", self.describe());
    }
}

/// The default limit of one `mpirun`.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the test `worker` of this test binary on `np` ranks and waits for `mpirun` at most
/// `timeout`; past it, kills the whole job and panics saying so, with the output so far.
pub fn mpirun(np: usize, worker: &str, timeout: Duration) -> MpiRun {
    mpirun_with(np, worker, timeout, &[])
}

/// [`mpirun`], with the variables `vars` set on every rank (how a spawning test passes a worker
/// its paths).
pub fn mpirun_with(np: usize, worker: &str, timeout: Duration, vars: &[(&str, &str)]) -> MpiRun {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = mpirun::command(np);
    cmd.args(["-x", WORKER_VAR]);
    for (name, value) in vars {
        cmd.arg("-x").arg(format!("{name}={value}"));
    }
    cmd.arg(&exe)
        .args([
            "--exact",
            worker,
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(WORKER_VAR, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills mpirun and every rank together.
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run mpirun (install openmpi-bin): {e}"));
    let group = format!("-{}", child.id());
    let readers = [
        read_all(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        read_all(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ];
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for mpirun") {
            break status;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            // SIGTERM lets mpirun take its ranks down; SIGKILL whatever is left. kill(1) rather
            // than libc, so that crates without a libc dev-dependency can include this file.
            kill_group("TERM", &group);
            std::thread::sleep(Duration::from_secs(5));
            kill_group("KILL", &group);
            break child.wait().expect("waiting for the killed mpirun");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    let run = MpiRun {
        np,
        worker: worker.to_string(),
        status,
        stdout,
        stderr,
        seconds: started.elapsed().as_secs_f64(),
    };
    assert!(
        !timed_out,
        "mpirun -np {np} {worker} did not finish within {timeout:?} (a hang): killed\n{}",
        run.describe()
    );
    run
}

/// Sends `signal` to the process group `group` ("-PGID").
fn kill_group(signal: &str, group: &str) {
    // Fails only when the group is already gone.
    let _ = Command::new("kill")
        .args(["-s", signal, "--", group])
        .stderr(Stdio::null())
        .status();
}

fn read_all(pipe: Option<Box<dyn Read + Send>>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
