//! A warning when a pool promises more than it holds: thin volumes may
//! add up to more than the pool's data area (that is what thin
//! provisioning is for), but once the pool fills, writes fail or wait, so
//! the operator should hear about it when it happens, as LVM warns when
//! the thin volumes' sizes exceed their pool's.

/// After a volume was created or grown in `pool`: logs a warning when
/// the active volumes' sizes add up to more than the data area times the
/// pool's `overprovision_warning_ratio`.
pub(crate) async fn warn_if_overprovisioned(pool: &str) {
    let Ok(p) = crate::pool(pool) else { return };
    let Ok(vols) = crate::volumes(pool).await else {
        return;
    };
    let data = p.shared.stats().data_blocks * p.options().block_size;
    let promised: u64 = vols.iter().filter_map(|v| v.size).sum();
    if let Some(msg) = warning(
        pool,
        promised,
        data,
        p.options().overprovision_warning_ratio,
    ) {
        tracing::warn!("{msg}");
    }
}

/// The warning for `promised` bytes of volumes in `data` bytes of pool,
/// if that is more than `ratio` allows (0: none).
pub(crate) fn warning(pool: &str, promised: u64, data: u64, ratio: f64) -> Option<String> {
    (data > 0 && ratio > 0.0 && promised as f64 > data as f64 * ratio).then(|| {
        format!(
            "pool {pool} is overprovisioned: its volumes add up to {promised} bytes, {:.2}x \
             its {data} bytes of data space; writes fail once it fills (ferrothin status \
             shows how full it is; the pool option overprovision_warning_ratio sets when \
             this is said)",
            promised as f64 / data as f64
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pool_that_promises_more_than_it_has_is_warned_about() {
        assert_eq!(warning("p", 100, 100, 1.0), None);
        assert_eq!(warning("p", 100, 0, 1.0), None);
        assert_eq!(
            warning("p", 300, 200, 1.0).as_deref(),
            Some(
                "pool p is overprovisioned: its volumes add up to 300 bytes, 1.50x its 200 \
                 bytes of data space; writes fail once it fills (ferrothin status shows how \
                 full it is; the pool option overprovision_warning_ratio sets when this is \
                 said)"
            )
        );
        // A pool meant to be overprovisioned sets its own line, or none.
        assert_eq!(warning("p", 300, 200, 2.0), None);
        assert!(warning("p", 401, 200, 2.0).is_some());
        assert_eq!(warning("p", 1 << 40, 200, 0.0), None);
    }
}
