"""ferrothin's commands for SPDK's JSON-RPC client (`pip install spdk`).

    PYTHONPATH=src/rpc spdk-rpc --plugin ferrothin_plugin bdev_thin_get_pools

Adds a command line for every thin pool and volume method, and for the
NBD methods' ferrothin parameters (export names, listen addresses):
spdk-rpc's own nbd_start_disk/nbd_stop_disk/nbd_get_disks work too, but
cannot give an export name, so `nbd_export_start`, `nbd_export_stop` and
`nbd_export_list` can.
"""

import json


def _print(result):
    if isinstance(result, (dict, list)):
        print(json.dumps(result, indent=2))
    elif isinstance(result, bool):
        print("true" if result else "false")
    else:
        print(result)


def _call(method, **names):
    """A handler calling `method` with the named args that were given."""

    def run(args):
        params = {}
        for param, attr in names.items():
            value = getattr(args, attr)
            if value is not None:
                params[param] = value
        _print(args.client.call(method, params or None))

    return run


def _flag(value):
    return {"true": True, "false": False}[value.lower()]


def spdk_rpc_plugin_initialize(subparsers):
    # Thin pools.
    p = subparsers.add_parser("bdev_thin_pool_create", help="Create or open a thin pool")
    p.add_argument("name", help="pool name")
    p.add_argument("metadata_bdev", help="metadata bdev (alone: one-device layout)")
    p.add_argument("-d", "--data-bdev", help="data bdev")
    p.add_argument("-b", "--block-size", type=int, help="data block size in bytes (64 KiB steps)")
    p.add_argument("-z", "--zero-new-blocks", type=_flag, help="true|false (default true)")
    p.add_argument("--discard", choices=["passdown", "nopassdown", "ignore"])
    p.add_argument("--error-if-no-space", type=_flag, help="true|false")
    p.add_argument("--no-space-timeout-s", type=int, help="0 queues forever (default 60)")
    p.add_argument("--low-water-mark-blocks", type=int)
    p.add_argument("--commit-period-ms", type=int, help="default 1000")
    p.add_argument("--metadata-core", type=int)
    p.add_argument("--read-only", type=_flag, help="true|false")
    p.add_argument("--metadata-size", type=int, help="one-device layout: metadata bytes")
    p.add_argument("--overprovision-warning-ratio", type=float,
                   help="warn when volumes exceed this many times the data space (0: never)")
    p.add_argument("--autoextend-threshold", type=int, help="percent of data used (0: off)")
    p.add_argument("--autoextend-percent", type=int, help="grow by this percent (default 20)")
    p.add_argument("--metadata-autoextend-threshold", type=int)
    p.add_argument("--metadata-autoextend-percent", type=int)
    p.add_argument("--metadata-create-limit", type=int,
                   help="refuse new volumes above this percent of metadata used")
    p.add_argument("--force-format", type=_flag,
                   help="true: format over a bdev holding other data (never over a pool)")
    p.set_defaults(func=_call(
        "bdev_thin_pool_create", name="name", metadata_bdev="metadata_bdev",
        data_bdev="data_bdev", block_size="block_size", zero_new_blocks="zero_new_blocks",
        discard="discard", error_if_no_space="error_if_no_space",
        no_space_timeout_s="no_space_timeout_s", low_water_mark_blocks="low_water_mark_blocks",
        commit_period_ms="commit_period_ms", metadata_core="metadata_core",
        read_only="read_only", metadata_size="metadata_size",
        overprovision_warning_ratio="overprovision_warning_ratio",
        autoextend_threshold="autoextend_threshold", autoextend_percent="autoextend_percent",
        metadata_autoextend_threshold="metadata_autoextend_threshold",
        metadata_autoextend_percent="metadata_autoextend_percent",
        metadata_create_limit="metadata_create_limit",
        force_format="force_format"))

    p = subparsers.add_parser("bdev_thin_pool_delete", help="Close a pool (data stays on disk)")
    p.add_argument("name")
    p.set_defaults(func=_call("bdev_thin_pool_delete", name="name"))

    p = subparsers.add_parser("bdev_thin_pool_get_pools", help="Show pools")
    p.add_argument("-n", "--name")
    p.set_defaults(func=_call("bdev_thin_pool_get_pools", name="name"))

    p = subparsers.add_parser("bdev_thin_pool_get_events",
                              help="Pool events: mode changes, low water, no-space timeouts")
    p.add_argument("-i", "--id", type=int, help="first event id (default 0)")
    p.add_argument("-n", "--max", type=int, help="at most this many")
    p.set_defaults(func=_call("bdev_thin_pool_get_events", id="id", max="max"))

    p = subparsers.add_parser("bdev_thin_pool_resize", help="Pick up grown base bdevs")
    p.add_argument("name")
    p.set_defaults(func=_call("bdev_thin_pool_resize", name="name"))

    p = subparsers.add_parser("bdev_thin_pool_set_options",
                              help="Change a running pool's options")
    p.add_argument("name")
    p.add_argument("--discard", choices=["passdown", "nopassdown", "ignore"])
    p.add_argument("-z", "--zero-new-blocks", type=_flag, help="true|false")
    p.add_argument("--error-if-no-space", type=_flag, help="true|false")
    p.add_argument("--no-space-timeout-s", type=int, help="0 queues forever")
    p.add_argument("--low-water-mark-blocks", type=int)
    p.add_argument("--commit-period-ms", type=int)
    p.add_argument("--overprovision-warning-ratio", type=float)
    p.add_argument("--autoextend-threshold", type=int, help="percent of data used (0: off)")
    p.add_argument("--autoextend-percent", type=int, help="grow by this percent (default 20)")
    p.add_argument("--metadata-autoextend-threshold", type=int)
    p.add_argument("--metadata-autoextend-percent", type=int)
    p.add_argument("--metadata-create-limit", type=int,
                   help="refuse new volumes above this percent of metadata used")
    p.set_defaults(func=_call(
        "bdev_thin_pool_set_options", name="name", discard="discard",
        zero_new_blocks="zero_new_blocks", error_if_no_space="error_if_no_space",
        no_space_timeout_s="no_space_timeout_s", low_water_mark_blocks="low_water_mark_blocks",
        commit_period_ms="commit_period_ms",
        overprovision_warning_ratio="overprovision_warning_ratio",
        autoextend_threshold="autoextend_threshold", autoextend_percent="autoextend_percent",
        metadata_autoextend_threshold="metadata_autoextend_threshold",
        metadata_autoextend_percent="metadata_autoextend_percent",
        metadata_create_limit="metadata_create_limit"))

    for what, target in (("bdev_thin_pool", "pool"), ("bdev_thin", "volume")):
        p = subparsers.add_parser(what + "_suspend",
                                  help="Hold a %s's new I/O, drain, commit" % target)
        p.add_argument("name")
        p.add_argument("-t", "--timeout-ms", type=int, help="wait for in-flight I/O (30000)")
        p.set_defaults(func=_call(what + "_suspend", name="name", timeout_ms="timeout_ms"))
        p = subparsers.add_parser(what + "_resume", help="Release a %s's held I/O" % target)
        p.add_argument("name")
        p.set_defaults(func=_call(what + "_resume", name="name"))

    p = subparsers.add_parser("bdev_thin_set_read_only",
                              help="Make a volume read-only (or writable: -w)")
    p.add_argument("name")
    p.add_argument("-w", "--writable", action="store_true",
                   help="make it writable again")
    p.set_defaults(func=lambda args: _print(args.client.call(
        "bdev_thin_set_read_only", {"name": args.name, "read_only": not args.writable})))

    p = subparsers.add_parser("bdev_thin_pool_set_transaction_id",
                              help="Set the transaction id (compare and swap)")
    p.add_argument("name")
    p.add_argument("current", type=int)
    p.add_argument("new", type=int)
    p.set_defaults(func=_call("bdev_thin_pool_set_transaction_id",
                              name="name", current="current", new="new"))

    for verb, text in (("reserve", "Take"), ("release", "Drop")):
        method = "bdev_thin_pool_%s_metadata_snap" % verb
        p = subparsers.add_parser(method, help="%s the metadata snapshot" % text)
        p.add_argument("name")
        p.set_defaults(func=_call(method, name="name"))

    # Thin volumes.
    p = subparsers.add_parser("bdev_thin_create", help="Create a thin volume")
    p.add_argument("pool")
    p.add_argument("name")
    p.add_argument("size_in_mib", type=int, nargs="?", help="or --size-bytes / --num-blocks")
    p.add_argument("--size-bytes", type=int, help="whole 512-byte sectors")
    p.add_argument("--num-blocks", type=int, help="in the data bdev's blocks")
    p.add_argument("-i", "--dev-id", type=int, help="24-bit device id (default: lowest free)")
    p.add_argument("-o", "--external-origin", help="read-only bdev for unprovisioned blocks")
    p.set_defaults(func=_call("bdev_thin_create", pool="pool", name="name",
                              size_in_mib="size_in_mib", size_bytes="size_bytes",
                              num_blocks="num_blocks", dev_id="dev_id",
                              external_origin="external_origin"))

    p = subparsers.add_parser("bdev_thin_activate", help="Make an existing device a bdev")
    p.add_argument("pool")
    p.add_argument("name")
    p.add_argument("dev_id", type=int)
    p.add_argument("size_in_mib", type=int, nargs="?",
                   help="default: the size it last had in this daemon")
    p.add_argument("-o", "--external-origin")
    p.add_argument("--origin-dev-id", type=int, help="the device it is a snapshot of")
    p.add_argument("-f", "--force", action="store_true", default=None,
                   help="allow a size that hides mapped blocks")
    p.set_defaults(func=_call("bdev_thin_activate", pool="pool", name="name", dev_id="dev_id",
                              size_in_mib="size_in_mib", external_origin="external_origin",
                              origin_dev_id="origin_dev_id", force="force"))

    p = subparsers.add_parser("bdev_thin_snapshot", help="Snapshot a volume")
    p.add_argument("origin", help="the volume's bdev name")
    p.add_argument("name", help="the snapshot's bdev name")
    p.add_argument("-i", "--dev-id", type=int)
    p.set_defaults(func=_call("bdev_thin_snapshot", origin="origin", name="name",
                              dev_id="dev_id"))

    p = subparsers.add_parser(
        "bdev_thin_delete",
        help="Delete a volume and its blocks (or an inactive device: -p POOL -i DEV_ID)")
    p.add_argument("name", nargs="?", help="the volume's bdev name")
    p.add_argument("-p", "--pool", help="with --dev-id: an inactive device of this pool")
    p.add_argument("-i", "--dev-id", type=int)
    p.add_argument("-f", "--force", action="store_true", default=None,
                   help="also when exported or open: its exports are stopped first")
    p.set_defaults(func=_call("bdev_thin_delete", name="name", pool="pool", dev_id="dev_id",
                              force="force"))

    p = subparsers.add_parser("bdev_thin_deactivate",
                              help="Drop a volume's bdev and keep its data (bdev_thin_activate brings it back)")
    p.add_argument("name")
    p.add_argument("-f", "--force", action="store_true", default=None,
                   help="also when exported or open: its exports are stopped first")
    p.set_defaults(func=_call("bdev_thin_deactivate", name="name", force="force"))

    p = subparsers.add_parser("bdev_thin_resize", help="Grow or shrink a volume")
    p.add_argument("name")
    p.add_argument("size_in_mib", type=int, nargs="?", help="or --size-bytes / --num-blocks")
    p.add_argument("--size-bytes", type=int, help="whole 512-byte sectors")
    p.add_argument("--num-blocks", type=int, help="in the volume's blocks")
    p.add_argument("-f", "--force", action="store_true", default=None,
                   help="shrink even while open for writing")
    p.set_defaults(func=_call("bdev_thin_resize", name="name", size_in_mib="size_in_mib",
                              size_bytes="size_bytes", num_blocks="num_blocks", force="force"))

    p = subparsers.add_parser("bdev_thin_get_volumes", help="Show volumes")
    p.add_argument("-p", "--pool")
    p.add_argument("-n", "--name")
    p.add_argument("-i", "--dev-id", type=int)
    p.set_defaults(func=_call("bdev_thin_get_volumes", pool="pool", name="name", dev_id="dev_id"))

    p = subparsers.add_parser("bdev_thin_delta", help="Changed block ranges")
    p.add_argument("name")
    p.add_argument("base", help='a volume, or "metadata_snap"')
    p.set_defaults(func=_call("bdev_thin_delta", name="name", base="base"))

    # NBD exports with ferrothin's parameters.
    p = subparsers.add_parser("nbd_export_start", help="Export a bdev over NBD")
    p.add_argument("bdev_name")
    p.add_argument("nbd_device", nargs="?",
                   help="listen address, HOST:PORT or a socket path (default 127.0.0.1:10809)")
    p.add_argument("-e", "--export-name", help="default: the bdev name")
    p.set_defaults(func=_call("nbd_start_disk", bdev_name="bdev_name",
                              nbd_device="nbd_device", export_name="export_name"))

    p = subparsers.add_parser("nbd_export_stop", help="Stop NBD exports at an address")
    p.add_argument("nbd_device")
    p.add_argument("-e", "--export-name", help="only this export")
    p.set_defaults(func=_call("nbd_stop_disk", nbd_device="nbd_device",
                              export_name="export_name"))

    p = subparsers.add_parser("nbd_export_list", help="Show NBD exports")
    p.add_argument("nbd_device", nargs="?")
    p.set_defaults(func=_call("nbd_get_disks", nbd_device="nbd_device"))
