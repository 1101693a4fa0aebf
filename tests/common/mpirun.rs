//! `mpirun` as the tests and benches start it (included with `#[path]`): Open MPI's settings for a
//! container on loopback, for the test suite only. Running as root allowed
//! (`OMPI_ALLOW_RUN_AS_ROOT*`), shared memory and self only (`btl self,vader`, `pml ob1`: no
//! InfiniBand or UCX probing), no single-copy mechanism (CMA needs ptrace rights containers often
//! lack), no core binding (more ranks than cores with `--oversubscribe`).
#![allow(dead_code)]

use std::process::Command;

/// The variables set on `mpirun`, and so on every rank.
pub const ENV: [(&str, &str); 5] = [
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
    ("OMPI_MCA_btl", "self,vader"),
    ("OMPI_MCA_pml", "ob1"),
    ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
];

/// `mpirun --oversubscribe --bind-to none -np NP` with [`ENV`]; add `-x` variables, the program
/// and its arguments.
pub fn command(np: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--bind-to", "none", "-np"])
        .arg(np.to_string())
        .envs(ENV);
    cmd
}
