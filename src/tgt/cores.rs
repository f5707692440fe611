//! Checking `-m` against the machine, as spdk_tgt does: a reactor on a
//! core that does not exist would run unpinned, sharing a core with
//! another reactor, which is never what the mask asked for.

/// Refuses a mask naming cores this machine does not have.
pub fn check_mask(mask: &str, cores_here: u32) -> anyhow::Result<()> {
    let cores = reactor::parse_core_mask(mask)?;
    let missing: Vec<String> = cores
        .iter()
        .filter(|&&c| c >= cores_here)
        .map(u32::to_string)
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "-m {mask}: this machine has {cores_here} cores (0-{}); there is no core {}",
            cores_here.saturating_sub(1),
            missing.join(", ")
        );
    }
    Ok(())
}

/// How many cores the machine has (configured, whether or not this
/// process may run on them all).
pub fn cores_here() -> u32 {
    // SAFETY: sysconf reads a system value; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    u32::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_beyond_the_machine_are_refused_by_number() -> anyhow::Result<()> {
        check_mask("0x3", 2)?;
        check_mask("[0,1]", 2)?;
        let e = check_mask("0xF", 2).unwrap_err().to_string();
        assert_eq!(
            e,
            "-m 0xF: this machine has 2 cores (0-1); there is no core 2, 3"
        );
        assert!(check_mask("0xZ", 2).is_err());
        Ok(())
    }
}
