//! What the plugin's native tests share: a [`Fixture`] with its own store,
//! settings, clock and scripted outgoing HTTP, and calls into it as the
//! Evotor cloud and the partner make them.

use crate::Ctx;
use crate::clock::ManualClock;
use crate::config::MapConfig;
use crate::config::settings;
use crate::endpoints::auth;
use crate::http::{Request, Response};
use crate::kv::MemKv;
use serde_json::{Value, json};

/// Where a [`Fixture`]'s clock starts, Unix seconds: 2027-01-01, after the
/// dates of the test data, as a real gateway's clock is.
pub const FIXTURE_START: u64 = 1_798_761_600;

/// A plugin with cheap password hashing, a hand-moved clock and its own store.
pub(crate) struct Fixture {
    pub kv: MemKv,
    pub config: MapConfig,
    pub clock: ManualClock,
    pub http: crate::outgoing::Scripted,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with(&[])
    }

    pub fn with(extra: &[(&str, &str)]) -> Self {
        let mut config = MapConfig::from([
            ("server_bearer_token", "srv"),
            ("partner_api_token", "partner"),
            ("password_argon2_memory_kib", "64"),
            ("password_argon2_iterations", "1"),
            // Billing has its own tests; here every user is entitled.
            ("billing_enforcement", "off"),
        ]);
        for (key, value) in extra {
            config.0.insert((*key).into(), (*value).into());
        }
        Self { kv: MemKv::default(), config, clock: ManualClock::at(FIXTURE_START), http: Default::default() }
    }

    /// A world whose store answers scans and `get_many`s in full, for
    /// tests that count store calls ([`MemKv::with_full_answers`]).
    pub fn with_full_answers() -> Self {
        Self { kv: MemKv::with_full_answers(), ..Self::new() }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        Ctx { kv: &self.kv, config: &self.config, clock: &self.clock, http: &self.http }
    }

    pub fn call(&self, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> Response {
        let mut request = Request::new(method, path);
        if let Some(token) = bearer {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        crate::handle(&self.ctx(), &request)
    }

    pub fn server(&self, path: &str, body: Value) -> Response {
        self.call("POST", path, Some("srv"), Some(body))
    }

    /// Registers `user` with a login and password; returns the user token.
    pub fn register(&self, user: &str, login: &str) -> String {
        let response = self.server(
            "/api/v1/user/create",
            json!({"userId": user, "username": login, "password": "pw-1", "shop": "Lavka"}),
        );
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        response.body_json()["token"].as_str().expect("token").to_owned()
    }

    /// What `token` decides from its grant (`None`: the records decide)
    /// and from the records, as error codes.
    pub fn decisions(&self, token: &str) -> (Option<Result<(), u32>>, Result<(), u32>) {
        let settings = settings(&self.ctx()).expect("settings");
        crate::domain::authorization::both_decisions(&self.ctx(), &crate::domain::tokens::hash(token), &settings)
    }

    /// The grant in `token`'s record, if it has one.
    pub fn grant(&self, token: &str) -> Option<crate::storage::Grant> {
        let key = crate::storage::token_key(&crate::domain::tokens::hash(token));
        crate::storage::read::<crate::storage::TokenIndex>(&self.kv, &key).expect("read").expect("issued").grant
    }

    /// Who `token` authenticates as, or the error code.
    pub fn whoami(&self, token: &str) -> Result<String, u32> {
        let settings = settings(&self.ctx()).expect("settings");
        let request = Request::new("GET", "/").header("authorization", &format!("Bearer {token}"));
        auth::require_user(&self.ctx(), &request, &settings).map_err(|err| err.code)
    }
}

/// What a [`CommitThrough`] does with a commit: the store underneath, then the commit's checks and writes.
type CommitFn<'a> = dyn Fn(&MemKv, Vec<crate::kv::Check>, Vec<crate::kv::Write>) -> Result<(), crate::kv::KvError> + 'a;

/// A store whose reads go straight to `kv` and whose commits go through
/// `commit`: for tests of a commit that fails, is lost, or meets another.
pub(crate) struct CommitThrough<'a> {
    pub kv: &'a MemKv,
    pub commit: Box<CommitFn<'a>>,
}

impl crate::kv::Kv for CommitThrough<'_> {
    fn get(&self, key: &str) -> Result<Option<crate::kv::Entry>, crate::kv::KvError> {
        self.kv.get(key)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<crate::kv::Entry>>, crate::kv::KvError> {
        self.kv.get_many(keys)
    }
    fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, crate::kv::Entry)>, crate::kv::KvError> {
        self.kv.scan(prefix, start_after, limit)
    }
    fn commit(&self, checks: Vec<crate::kv::Check>, writes: Vec<crate::kv::Write>) -> Result<(), crate::kv::KvError> {
        (self.commit)(self.kv, checks, writes)
    }
}
