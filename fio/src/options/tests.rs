use super::*;

#[test]
fn a_json_config_is_what_a_job_needs() {
    let o = JobOptions::parse(Some("bdev.json"), None, false, true).unwrap();
    assert_eq!(o.json_conf, PathBuf::from("bdev.json"));
    assert!(!o.bounce);
    assert!(
        JobOptions::parse(Some(" x.json "), None, true, true)
            .unwrap()
            .bounce
    );
}

#[test]
fn thread_zero_is_refused_first() {
    let e = JobOptions::parse(Some("bdev.json"), None, false, false).unwrap_err();
    assert_eq!(e, OptionError::NotThreaded);
    assert!(e.to_string().contains("thread=1"));
}

#[test]
fn legacy_conf_is_refused_with_the_option_to_use() {
    for json in [None, Some("a.json")] {
        let e = JobOptions::parse(json, Some("old.json"), false, true).unwrap_err();
        assert_eq!(e, OptionError::LegacyConf("old.json".into()));
        assert!(e.to_string().contains("spdk_json_conf=old.json"), "{e}");
    }
}

#[test]
fn no_config_or_an_empty_one_is_an_error() {
    for json in [None, Some(""), Some("  ")] {
        let e = JobOptions::parse(json, None, false, true).unwrap_err();
        assert_eq!(e, OptionError::NoConfig);
    }
    // An empty spdk_conf is as good as none.
    assert!(JobOptions::parse(Some("a.json"), Some(""), false, true).is_ok());
}

#[test]
fn read_from_fios_struct() {
    let json = c"conf.json";
    let raw = RawOptions {
        pad: std::ptr::null_mut(),
        json_conf: json.as_ptr() as *mut c_char,
        conf: std::ptr::null_mut(),
        bounce: 1,
        spdk_mem: std::ptr::null_mut(),
        single_seg: std::ptr::null_mut(),
        log_flags: std::ptr::null_mut(),
        env_context: std::ptr::null_mut(),
    };
    // SAFETY: a live RawOptions with NUL-terminated strings.
    let o = unsafe { JobOptions::from_fio(&raw, true) }.unwrap();
    assert_eq!(o.json_conf, PathBuf::from("conf.json"));
    assert!(o.bounce);
    // SAFETY: null is allowed.
    let e = unsafe { JobOptions::from_fio(std::ptr::null(), true) }.unwrap_err();
    assert_eq!(e, OptionError::NoConfig);
}

#[test]
fn the_table_points_into_the_struct_and_ends_with_zero() {
    let t = table();
    let mut names = Vec::new();
    for i in 0.. {
        // SAFETY: the table ends with an entry whose name is null.
        let o = unsafe { &*t.add(i) };
        if o.name.is_null() {
            break;
        }
        // SAFETY: names are static C strings.
        names.push(
            unsafe { CStr::from_ptr(o.name) }
                .to_str()
                .unwrap()
                .to_string(),
        );
        assert!(
            o.off1 as usize >= std::mem::size_of::<*mut c_void>(),
            "offset 0 is fio's"
        );
        assert!((o.off1 as usize) < RAW_SIZE);
        assert_eq!(o.category, sys::FIO_OPT_C_ENGINE as u64);
    }
    assert_eq!(&names[..2], ["spdk_json_conf", "spdk_conf"]);
}
