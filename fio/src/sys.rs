//! fio 3.33's C structures, as bindgen made them from Debian's fio source
//! (`fio/regen-bindings.sh`). The generated file carries its own layout
//! checks: a wrong size or offset fails the build.

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    clippy::all,
    rustdoc::all
)]
mod bindings {
    include!("sys/bindings.rs");
}

pub use bindings::*;

/// The fio release whose layouts these are; `get_ioengine` refuses any
/// other (fio's own check is only the ops version, which 3.30 to 3.33
/// share although their `thread_data` differs).
pub const FIO_VERSION: &str = "fio-3.33";
