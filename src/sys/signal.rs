//! SIGTERM / SIGUSR1 handlers that only record the signal (preemption: the training
//! loop stops after the current step).

/// The stop signal received, 0 for none (set by the handler, read by the loop).
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn record_stop_signal(sig: libc::c_int) {
    // Async-signal-safe: one atomic store.
    STOP_SIGNAL.store(sig, std::sync::atomic::Ordering::SeqCst);
}

/// Makes SIGTERM (Slurm's preemption and time limit, `scancel`) and SIGUSR1 (`sbatch
/// --signal`) only record themselves, for [`stop_signal`] to report: the training loop
/// then stops after its current step with a checkpoint instead of dying mid-step.
pub fn install_stop_handlers() -> Result<(), String> {
    for sig in [libc::SIGTERM, libc::SIGUSR1] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler
        // is an extern "C" fn that only stores into an atomic (async-signal-safe).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = record_stop_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!(
                "installing the handler of signal {sig}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The name of the stop signal this process received since [`install_stop_handlers`]
/// (`"SIGTERM"` or `"SIGUSR1"`), if any.
pub fn stop_signal() -> Option<&'static str> {
    match STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        s if s == libc::SIGTERM => Some("SIGTERM"),
        s if s == libc::SIGUSR1 => Some("SIGUSR1"),
        _ => Some("a stop signal"),
    }
}
