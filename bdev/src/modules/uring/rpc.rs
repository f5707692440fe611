use crate::rpc::RpcHandler;
pub const METHODS: &[(&str, RpcHandler)] = &[];
