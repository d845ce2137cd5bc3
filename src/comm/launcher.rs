//! Was this process started by an MPI launcher, and with how many processes?
//!
//! Read from the variables that `mpirun` (Open MPI), `mpiexec` (MPICH, Intel MPI,
//! MVAPICH) and `srun` (Slurm with PMI or PMIx) put in each rank's environment.

/// The launcher's variables that [`detect`] looks at, world-size variables first.
pub const VARS: [&str; 7] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "PMIX_SIZE",
    "PMIX_RANK",
    "PMI_RANK",
    "OMPI_COMM_WORLD_RANK",
];

/// What the environment says about the launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// The number of processes, when the launcher tells it (PMIx under `srun` may not).
    pub world: Option<usize>,
}

/// `Some` when this process was started by an MPI launcher.
///
/// ```
/// match dml::comm::launcher::detect() {
///     Some(l) => println!("started by a launcher, world {:?}", l.world),
///     None => println!("a single process"),
/// }
/// ```
pub fn detect() -> Option<Launch> {
    detect_from(|k| std::env::var(k).ok())
}

/// [`detect`] over any variable lookup (testable without touching the environment).
pub fn detect_from(get: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    let size = |k: &str| get(k).and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(world) = VARS[..4].iter().find_map(|k| size(k)) {
        return Some(Launch { world: Some(world) });
    }
    if VARS[4..].iter().any(|k| get(k).is_some()) {
        // A rank variable without a size (PMIx under srun): Slurm's task count, if any.
        let world = size("SLURM_STEP_NUM_TASKS").or_else(|| size("SLURM_NTASKS"));
        return Some(Launch { world });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn detects_each_launcher() {
        assert_eq!(detect_from(env(&[])), None);
        assert_eq!(detect_from(env(&[("SLURM_NTASKS", "4")])), None);
        let w = |n| Some(Launch { world: Some(n) });
        assert_eq!(detect_from(env(&[("OMPI_COMM_WORLD_SIZE", "2")])), w(2));
        assert_eq!(detect_from(env(&[("PMI_SIZE", "8")])), w(8));
        assert_eq!(detect_from(env(&[("OMPI_COMM_WORLD_SIZE", "1")])), w(1));
        assert_eq!(
            detect_from(env(&[("PMIX_RANK", "0"), ("SLURM_STEP_NUM_TASKS", "16")])),
            w(16)
        );
        assert_eq!(
            detect_from(env(&[("PMIX_RANK", "3")])),
            Some(Launch { world: None })
        );
    }
}
