//! One JSON-RPC registry for every method the process serves. Each method
//! is declared beside its handler ([`RpcMethod`]: its name, its parameter
//! type, the states it may run in and where it runs) and reaches the
//! registry through its module ([`crate::Module::rpc_methods`]) or, for
//! the daemon's own methods, through the daemon. The daemon's socket, its
//! config loader and the bench tool's config loader all dispatch through
//! [`RpcRegistry`], so a method behaves the same whichever way it comes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::BdevError;

/// A JSON-RPC error object: SPDK answers bdev failures with the negative
/// errno as the code and the errno's text as the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;
pub const METHOD_NOT_FOUND: i32 = -32601;

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
    pub fn not_found() -> Self {
        Self::new(METHOD_NOT_FOUND, "Method not found")
    }
}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> Self {
        RpcError::new(-e.errno(), e.to_string())
    }
}

pub type RpcResult = Result<Value, RpcError>;
/// What an app-core method returns when it has to wait (a thin method hops
/// to a metadata core and back).
pub type RpcFuture = Pin<Box<dyn Future<Output = RpcResult>>>;

/// Decodes `params` into `T`; missing params decode as `{}`. A failure is
/// SPDK's answer for bdev-module methods: -32603 "spdk_json_decode_object
/// failed" (we add what was wrong).
pub fn decode<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    decode_with(params, INTERNAL_ERROR)
}

/// `decode` answering with `code` (the error module says -32602).
pub fn decode_with<T: DeserializeOwned>(params: Option<Value>, code: i32) -> Result<T, RpcError> {
    let v = params.unwrap_or_else(|| Value::Object(Default::default()));
    serde_json::from_value(v)
        .map_err(|e| RpcError::new(code, format!("spdk_json_decode_object failed: {e}")))
}

/// When a method may run: SPDK's STARTUP (before framework_start_init) and
/// RUNTIME states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum States {
    Runtime,
    StartupOnly,
    Any,
}

impl States {
    pub fn allows(self, runtime: bool) -> bool {
        match self {
            States::Any => true,
            States::Runtime => runtime,
            States::StartupOnly => !runtime,
        }
    }
}

/// How a method answers malformed params.
#[derive(Clone, Copy, Debug)]
pub enum BadParams {
    /// `code` with serde's account of what was wrong.
    Code(i32),
    /// `code` with a fixed message (some SPDK methods say only "Invalid
    /// parameters", and scripts compare it).
    Says(i32, &'static str),
}

impl BadParams {
    fn decode<P: DeserializeOwned>(self, params: Option<Value>) -> Result<P, RpcError> {
        match self {
            BadParams::Code(code) => decode_with(params, code),
            BadParams::Says(code, msg) => {
                decode_with(params, code).map_err(|_| RpcError::new(code, msg))
            }
        }
    }
}

type Raw = Arc<dyn Fn(Option<Value>) -> RpcResult + Send + Sync>;
type RawAsync = Arc<dyn Fn(Option<Value>) -> RpcFuture + Send + Sync>;

/// Where a method runs.
#[derive(Clone)]
pub enum Handler {
    /// On the app core (as SPDK runs handlers on its app thread); answers
    /// before it returns.
    AppCore(Raw),
    /// On the app core, awaited there.
    AppCoreAsync(RawAsync),
    /// On the caller's thread, never on a reactor: for methods that wait
    /// on every core (stopping an export) or on the clock.
    Caller(Raw),
}

/// One method: declared beside its handler.
#[derive(Clone)]
pub struct RpcMethod {
    pub name: &'static str,
    /// The Rust type its params decode into (for docs and tests).
    pub params: &'static str,
    pub states: States,
    pub handler: Handler,
}

/// Starts a method's declaration: `method("bdev_x").app_core(handler)`.
pub fn method(name: &'static str) -> MethodBuilder {
    MethodBuilder {
        name,
        states: States::Runtime,
        bad: BadParams::Code(INTERNAL_ERROR),
    }
}

pub struct MethodBuilder {
    name: &'static str,
    states: States,
    bad: BadParams,
}

impl MethodBuilder {
    pub fn states(mut self, s: States) -> Self {
        self.states = s;
        self
    }

    pub fn bad_params(mut self, b: BadParams) -> Self {
        self.bad = b;
        self
    }

    fn finish<P>(self, handler: Handler) -> RpcMethod {
        RpcMethod {
            name: self.name,
            params: std::any::type_name::<P>(),
            states: self.states,
            handler,
        }
    }

    /// Runs `f` on the app core with the decoded params.
    pub fn app_core<P: DeserializeOwned + 'static>(self, f: fn(P) -> RpcResult) -> RpcMethod {
        let bad = self.bad;
        self.finish::<P>(Handler::AppCore(Arc::new(move |v| f(bad.decode(v)?))))
    }

    /// Runs the future `f` makes on the app core and awaits it there.
    pub fn app_core_async<P, Fut>(self, f: fn(P) -> Fut) -> RpcMethod
    where
        P: DeserializeOwned + 'static,
        Fut: Future<Output = RpcResult> + 'static,
    {
        let bad = self.bad;
        self.finish::<P>(Handler::AppCoreAsync(Arc::new(move |v| {
            match bad.decode::<P>(v) {
                Ok(p) => Box::pin(f(p)) as RpcFuture,
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        })))
    }

    /// Runs `f` on the app core with the params as they came: for methods
    /// whose params are optional or free-form.
    pub fn app_core_raw(self, f: fn(Option<Value>) -> RpcResult) -> RpcMethod {
        self.finish::<Option<Value>>(Handler::AppCore(Arc::new(f)))
    }

    /// Runs `f` on the caller's thread with the decoded params.
    pub fn caller<P: DeserializeOwned + 'static>(
        self,
        f: impl Fn(P) -> RpcResult + Send + Sync + 'static,
    ) -> RpcMethod {
        let bad = self.bad;
        self.finish::<P>(Handler::Caller(Arc::new(move |v| f(bad.decode(v)?))))
    }

    /// Runs `f` on the caller's thread with the params as they came.
    pub fn caller_raw(
        self,
        f: impl Fn(Option<Value>) -> RpcResult + Send + Sync + 'static,
    ) -> RpcMethod {
        self.finish::<Option<Value>>(Handler::Caller(Arc::new(f)))
    }
}

/// Every method the process serves, in the order they were added.
#[derive(Clone, Default)]
pub struct RpcRegistry {
    methods: Vec<RpcMethod>,
}

/// SPDK's answers to a method called in the wrong state.
const RUNTIME_ONLY: &str =
    "Method may only be called after framework is initialized using framework_start_init RPC.";
const STARTUP_ONLY: &str = "Method may only be called before framework is initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the framework_start_init RPC.";

impl RpcRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with the bdev layer's methods and every registered
    /// module's.
    pub fn with_modules() -> Self {
        let mut r = Self::new();
        r.extend(options_methods());
        for m in crate::module::modules() {
            r.extend(m.rpc_methods());
        }
        r.extend(crate::info::methods());
        r.extend(crate::notify::methods());
        r
    }

    /// Adds `m`. A name that is already taken keeps its first method and
    /// logs the second: two modules claiming one method is a build error
    /// that a test catches (`every_method_name_is_unique`), not a reason
    /// to stop a daemon.
    pub fn add(&mut self, m: RpcMethod) {
        if self.get(m.name).is_some() {
            tracing::error!(method = m.name, "an RPC method is registered twice");
            return;
        }
        self.methods.push(m);
    }

    pub fn extend(&mut self, ms: impl IntoIterator<Item = RpcMethod>) {
        for m in ms {
            self.add(m);
        }
    }

    pub fn get(&self, name: &str) -> Option<&RpcMethod> {
        self.methods.iter().find(|m| m.name == name)
    }

    pub fn methods(&self) -> &[RpcMethod] {
        &self.methods
    }

    /// The method `name` if it may run in this state, or SPDK's refusal.
    pub fn resolve(&self, name: &str, runtime: bool) -> Result<&RpcMethod, RpcError> {
        let m = self.get(name).ok_or_else(RpcError::not_found)?;
        if !m.states.allows(runtime) {
            let msg = if runtime { STARTUP_ONLY } else { RUNTIME_ONLY };
            return Err(RpcError::new(-1, msg));
        }
        Ok(m)
    }

    /// Runs `name` from a thread that is not a reactor: app-core methods
    /// are sent to `app_core` and awaited from here.
    pub fn call_blocking(
        &self,
        reactors: &reactor::ReactorHandle,
        app_core: u32,
        name: &str,
        params: Option<Value>,
        runtime: bool,
    ) -> RpcResult {
        let on_app_core = |r: Result<RpcResult, reactor::ReactorError>| {
            r.map_err(|e| RpcError::new(INTERNAL_ERROR, format!("reactor: {e}")))?
        };
        match &self.resolve(name, runtime)?.handler {
            Handler::Caller(f) => f(params),
            Handler::AppCore(f) => {
                let f = f.clone();
                on_app_core(reactors.block_on(app_core, move || async move { f(params) }))
            }
            Handler::AppCoreAsync(f) => {
                let f = f.clone();
                on_app_core(reactors.block_on(app_core, move || async move { f(params).await }))
            }
        }
    }

    /// Runs a method that answers at once on this thread, which need not
    /// be a reactor: for tests and tools that configure base bdevs
    /// without starting reactors. Async and caller methods are refused.
    pub fn call_now(&self, name: &str, params: Option<Value>) -> RpcResult {
        match &self.resolve(name, true)?.handler {
            Handler::AppCore(f) => f(params),
            _ => Err(RpcError::new(
                INTERNAL_ERROR,
                format!("{name} has to be awaited on a reactor"),
            )),
        }
    }

    /// Runs `name` on the reactor this is awaited on (a config loaded
    /// in-process). Caller methods may block on every core, this one
    /// included, so they are refused here.
    pub async fn call_here(&self, name: &str, params: Option<Value>) -> RpcResult {
        match &self.resolve(name, true)?.handler {
            Handler::AppCore(f) => f(params),
            Handler::AppCoreAsync(f) => f(params).await,
            Handler::Caller(_) => Err(RpcError::new(
                INTERNAL_ERROR,
                format!("{name} cannot run on a reactor"),
            )),
        }
    }
}

/// The bdev layer's option methods.
fn options_methods() -> Vec<RpcMethod> {
    vec![
        method("bdev_set_options")
            .states(States::StartupOnly)
            .app_core_raw(accept_options),
        method("bdev_wait_for_examine").app_core_async(wait_for_examine),
    ]
}

/// bdev_wait_for_examine: answers once no module's examine is running
/// (an lvstore found on a new bdev has been loaded), as SPDK's does.
async fn wait_for_examine(params: Value) -> RpcResult {
    if !params.is_object() && !params.is_null() {
        return Err(RpcError::invalid_params("params must be an object"));
    }
    while crate::module::examine_pending() {
        reactor::sleep(std::time::Duration::from_millis(1)).await;
    }
    Ok(Value::Bool(true))
}

/// Options we take but do not need (our pools size themselves): accepted so
/// that configs written for SPDK load unchanged.
fn accept_options(params: Option<Value>) -> RpcResult {
    match params {
        None | Some(Value::Object(_)) => Ok(Value::Bool(true)),
        Some(_) => Err(RpcError::invalid_params("params must be an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_name_is_unique() {
        let mut seen = std::collections::BTreeSet::new();
        let all = options_methods()
            .into_iter()
            .chain(
                crate::module::modules()
                    .into_iter()
                    .flat_map(|m| m.rpc_methods()),
            )
            .chain(crate::info::methods())
            .chain(crate::notify::methods());
        for r in all {
            assert!(seen.insert(r.name), "{} is registered twice", r.name);
        }
        assert!(seen.contains("bdev_malloc_create"));
        assert!(seen.contains("bdev_get_bdevs"));
    }

    #[test]
    fn states_and_bad_params_answer_as_spdk_does() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            #[allow(dead_code)]
            n: u32,
        }
        let mut r = RpcRegistry::new();
        r.add(method("a").app_core(|_: P| Ok(Value::Bool(true))));
        r.add(
            method("b")
                .states(States::StartupOnly)
                .bad_params(BadParams::Says(INVALID_PARAMS, "Invalid parameters"))
                .app_core(|_: P| Ok(Value::Bool(true))),
        );
        assert_eq!(r.resolve("x", true).err(), Some(RpcError::not_found()));
        assert_eq!(r.resolve("b", true).err().map(|e| e.code), Some(-1));
        assert_eq!(r.resolve("a", false).err().map(|e| e.code), Some(-1));
        let Handler::AppCore(a) = &r.resolve("a", true).unwrap().handler else {
            panic!("a runs on the app core")
        };
        assert_eq!(a(Some(serde_json::json!({"n": 1}))), Ok(Value::Bool(true)));
        assert_eq!(a(None).unwrap_err().code, INTERNAL_ERROR);
        let Handler::AppCore(b) = &r.resolve("b", false).unwrap().handler else {
            panic!("b runs on the app core")
        };
        assert_eq!(
            b(Some(serde_json::json!({"m": 1}))),
            Err(RpcError::new(INVALID_PARAMS, "Invalid parameters"))
        );
        assert!(r.methods()[0].params.ends_with("::P"));
    }
}
