//! A warning when a pool promises more than it holds: thin volumes may
//! add up to more than the pool's data area (that is what thin
//! provisioning is for), but once the pool fills, writes fail or wait, so
//! the operator should hear about it when it happens, as LVM warns when
//! the thin volumes' sizes exceed their pool's.

/// After a volume was created or grown in `pool`: logs a warning when
/// the active volumes' sizes add up to more than the data area.
pub(crate) async fn warn_if_overprovisioned(pool: &str) {
    let Ok(p) = crate::pool(pool) else { return };
    let Ok(vols) = crate::volumes(pool).await else {
        return;
    };
    let data = p.shared.stats().data_blocks * p.options().block_size;
    let promised: u64 = vols.iter().filter_map(|v| v.size).sum();
    if let Some(msg) = warning(pool, promised, data) {
        tracing::warn!("{msg}");
    }
}

/// The warning for `promised` bytes of volumes in `data` bytes of pool.
pub(crate) fn warning(pool: &str, promised: u64, data: u64) -> Option<String> {
    (data > 0 && promised > data).then(|| {
        format!(
            "pool {pool} is overprovisioned: its volumes add up to {promised} bytes, {:.2}x \
             its {data} bytes of data space; writes fail once it fills (ferrothin status \
             shows how full it is)",
            promised as f64 / data as f64
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pool_that_promises_more_than_it_has_is_warned_about() {
        assert_eq!(warning("p", 100, 100), None);
        assert_eq!(warning("p", 100, 0), None);
        assert_eq!(
            warning("p", 300, 200).as_deref(),
            Some(
                "pool p is overprovisioned: its volumes add up to 300 bytes, 1.50x its 200 \
                 bytes of data space; writes fail once it fills (ferrothin status shows how \
                 full it is)"
            )
        );
    }
}
