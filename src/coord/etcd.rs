//! The etcd backend (`--coord etcd://...`, cargo feature `etcd`): for hosts that share the
//! session storage, where kernel locks stop at the host.
//!
//! Each wrapper holds a lease, kept alive while it lives. The write lock and each prompt turn
//! are keys created under it with a "create if absent" transaction, in a chain per kind: a
//! key's create revision orders the chain (FIFO) and is the fencing token. A waiter watches the
//! nearest key ahead of it from the revision of the read that found it plus one (so a delete in
//! between is not missed), and reads again after every wake; a compacted or cancelled watch is
//! read again too. The fence state and the commit intent are one key, written only in
//! transactions that check the write-lock key is still ours. A lease that cannot be renewed in
//! time (the send time of the last renewal that succeeded, plus the TTL, minus a margin) is a
//! lost lock: the command is stopped and nothing is committed. Every call has a deadline and is
//! retried across the endpoints; "etcd unavailable" is its own failure (69).

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};

use crate::commit::{self, Intent, Recovery};
use crate::config::{Config, EtcdTarget, Verbosity};
use crate::coord::{Activity, Coordinator, Phase, TurnWait};
use crate::exit::{Failure, Kind};
use crate::fence::{Fence, Fingerprint, State, Verdict};
use crate::sidecar::{self, Sidecar};
use crate::signal::{self, Signals};

/// One call's bound; calls are retried until the operation's own deadline.
const CALL: Duration = Duration::from_secs(2);
/// How long a wait sleeps in one piece before it looks at signals and the lease again.
const SLICE: Duration = Duration::from_millis(100);

/// What a chain key holds: who it is, for `status` and messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub mode: String,
    pub command: String,
    pub since_ms: u64,
}

/// The state key: the fence state, the ticket counter's stand-in and an unfinished commit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    state: State,
    intent: Option<Intent>,
}

/// Coordination through etcd.
pub struct Etcd<'a> {
    config: &'a Config,
    target: &'a EtcdTarget,
    signals: &'a Signals,
    sidecar: Sidecar,
    rt: tokio::runtime::Runtime,
    client: RefCell<Client>,
    lease: i64,
    holder: Holder,
}

/// A key of ours in a chain: its name and create revision (the fencing token).
#[derive(Debug, Clone)]
pub struct Link {
    key: String,
    rev: i64,
}

/// The write lock, held; deleted (retried until the lease would have ended anyway) on drop.
pub struct WriteGuard {
    link: Link,
    client: Client,
    rt: tokio::runtime::Handle,
    lease: Duration,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        delete_until(&self.rt, &self.client, &self.link.key, self.lease);
    }
}

/// This wrapper's turn, once joined; deleted on drop.
pub struct Ticket {
    turn: Option<Link>,
    client: Client,
    rt: tokio::runtime::Handle,
    lease: Duration,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(link) = self.turn.take() {
            delete_until(&self.rt, &self.client, &link.key, self.lease);
        }
    }
}

/// Delete `key`, retrying until `within` has passed (the lease ends it then anyway).
fn delete_until(rt: &tokio::runtime::Handle, client: &Client, key: &str, within: Duration) {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let mut c = client.clone();
        let done = rt.block_on(async { tokio::time::timeout(CALL, c.delete(key, None)).await });
        if matches!(done, Ok(Ok(_))) {
            return;
        }
        std::thread::sleep(SLICE);
    }
}

/// The key that names a turn or a lock: the wrapper's lease makes it unique.
fn chain_key(prefix: &str, chain: &str, lease: i64) -> String {
    format!("{prefix}{chain}/{lease:016x}")
}

/// The prefix of everything of `name`.
#[must_use]
pub fn prefix(name: &str) -> String {
    format!("sessionlock/v1/{name}/")
}

impl<'a> Etcd<'a> {
    /// Connect, take a lease and keep it alive (a thread of its own), open the sidecar (for
    /// captures and kept outputs: no lock file).
    pub fn open(
        config: &'a Config,
        target: &'a EtcdTarget,
        signals: &'a Signals,
    ) -> Result<Self, Failure> {
        let sidecar = Sidecar::open(&config.key, true)?.expect("created");
        // The runtime's thread must not take the wrapper's signals (or the timer's).
        let mut old = nix::sys::signal::SigSet::empty();
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::all()),
            Some(&mut old),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build();
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&old),
            None,
        );
        let rt = rt.map_err(|e| {
            Failure::io("cannot start the etcd client", &e, config.key.path())
                .with_kind_if(Kind::Io, Kind::Software)
        })?;
        let unavailable = |e: &dyn std::fmt::Display| {
            Failure::new(
                Kind::Unavailable,
                format!("etcd is unavailable at {}: {e}", target.endpoints.join(",")),
                config.key.path(),
            )
        };
        let deadline = Instant::now()
            + config
                .lock_timeout
                .max(Duration::from_secs(5))
                .min(Duration::from_secs(30));
        let ttl = i64::try_from(target.lease.as_secs().max(1)).unwrap_or(10);
        let (client, lease, sent) = loop {
            let endpoints = target.endpoints.clone();
            let sent = Instant::now();
            let attempt = rt.block_on(async {
                tokio::time::timeout(CALL, async {
                    let mut client = Client::connect(
                        endpoints,
                        Some(
                            ConnectOptions::new()
                                .with_connect_timeout(CALL)
                                .with_timeout(CALL),
                        ),
                    )
                    .await?;
                    let lease = client.lease_grant(ttl, None).await?.id();
                    Ok::<_, etcd_client::Error>((client, lease))
                })
                .await
            });
            match attempt {
                Ok(Ok((client, lease))) => break (client, lease, sent),
                Ok(Err(e)) if Instant::now() >= deadline => return Err(unavailable(&e)),
                Err(e) if Instant::now() >= deadline => return Err(unavailable(&e)),
                _ => std::thread::sleep(SLICE),
            }
        };
        keep_alive(&rt, client.clone(), lease, target.lease, sent);
        let holder = Holder {
            pid: std::process::id(),
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            mode: config.mode.name().to_owned(),
            command: crate::child::command_name(&config.argv),
            since_ms: sidecar::now_ms(),
        };
        Ok(Self {
            config,
            target,
            signals,
            sidecar,
            rt,
            client: RefCell::new(client),
            lease,
            holder,
        })
    }

    #[must_use]
    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    fn prefix(&self) -> String {
        prefix(&self.target.name)
    }

    fn unavailable(&self, e: &dyn std::fmt::Display) -> Failure {
        Failure::new(
            Kind::Unavailable,
            format!(
                "etcd is unavailable at {}: {e}",
                self.target.endpoints.join(",")
            ),
            self.config.key.path(),
        )
    }

    /// Run one etcd call, retried until `deadline` (or a default of 10 s).
    fn call<T, F, Fut>(&self, deadline: Option<Instant>, f: F) -> Result<T, Failure>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
        loop {
            if signal::lease_lost() {
                return Err(self.lost());
            }
            let client = self.client.borrow().clone();
            let result = self
                .rt
                .block_on(async { tokio::time::timeout(CALL, f(client)).await });
            match result {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if Instant::now() >= deadline => return Err(self.unavailable(&e)),
                Err(e) if Instant::now() >= deadline => return Err(self.unavailable(&e)),
                _ => std::thread::sleep(SLICE),
            }
        }
    }

    fn lost(&self) -> Failure {
        Failure::new(
            Kind::Unavailable,
            "the etcd lease was lost (etcd unreachable for longer than --lease): nothing held \
             any more, nothing committed",
            self.config.key.path(),
        )
    }

    fn holder_value(&self) -> String {
        serde_json::to_string(&self.holder).expect("a holder always serializes")
    }

    /// Create our key in `chain` (or find it) and return its create revision.
    fn join_chain(&self, chain: &str) -> Result<Link, Failure> {
        let key = chain_key(&self.prefix(), chain, self.lease);
        let value = self.holder_value();
        let lease = self.lease;
        let rev = self.call(None, |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let resp = c.txn(txn).await?;
                if resp.succeeded() {
                    Ok(resp
                        .header()
                        .map_or(0, etcd_client::ResponseHeader::revision))
                } else {
                    let got = c.get(key, None).await?;
                    Ok(got
                        .kvs()
                        .first()
                        .map_or(0, etcd_client::KeyValue::create_revision))
                }
            }
        })?;
        Ok(Link { key, rev })
    }

    /// The nearest key ahead of `link` in `chain`, with the revision to watch it from.
    fn ahead_in(&self, chain: &str, link: &Link) -> Result<Option<(String, i64, Holder)>, Failure> {
        let prefix = format!("{}{chain}/", self.prefix());
        let rev = link.rev;
        self.call(None, |mut c| {
            let prefix = prefix.clone();
            async move {
                let resp = c
                    .get(
                        prefix,
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_max_create_revision(rev - 1)
                                .with_sort(SortTarget::Create, SortOrder::Descend)
                                .with_limit(1),
                        ),
                    )
                    .await?;
                let from = resp
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision)
                    + 1;
                Ok(resp.kvs().first().map(|kv| {
                    let holder = serde_json::from_slice(kv.value()).unwrap_or(Holder {
                        pid: 0,
                        host: String::new(),
                        mode: String::new(),
                        command: String::new(),
                        since_ms: 0,
                    });
                    (kv.key_str().unwrap_or_default().to_owned(), from, holder)
                }))
            }
        })
    }

    /// Wait until `key` is deleted (watched from `from`), `deadline` passes, or a signal
    /// comes. `Ok(true)`: look again.
    fn wait_deleted(
        &self,
        key: &str,
        from: i64,
        deadline: Option<Instant>,
        mut notice: Option<(Duration, &mut dyn FnMut() -> String)>,
    ) -> Result<Result<bool, TurnWait>, Failure> {
        let started = Instant::now();
        let client = self.client.borrow().clone();
        let key = key.to_owned();
        let (tx, rx) = std::sync::mpsc::channel::<bool>();
        // The watch runs on the runtime's thread; it reports a delete (true) or a reason to
        // read again (false).
        let watch = self.rt.spawn(async move {
            let mut c = client;
            let Ok((_watcher, mut stream)) = c
                .watch(key, Some(WatchOptions::new().with_start_revision(from)))
                .await
            else {
                let _ = tx.send(false);
                signal::wake();
                return;
            };
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled() || resp.compact_revision() > 0 {
                    break;
                }
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    let _ = tx.send(true);
                    signal::wake();
                    return;
                }
            }
            let _ = tx.send(false);
            signal::wake();
        });
        let outcome = loop {
            let now = Instant::now();
            if let Some((after, text)) = notice.as_mut()
                && now >= started + *after
            {
                crate::exit::say(&text());
                notice = None;
            }
            if deadline.is_some_and(|d| d <= now) {
                break Err(TurnWait::TimedOut);
            }
            if signal::lease_lost() {
                watch.abort();
                return Err(self.lost());
            }
            let woken = self
                .signals
                .wait(None, Some(now + SLICE))
                .map_err(|e| Failure::io("cannot wait for etcd", &e, self.config.key.path()))?;
            if let Some(&received) = woken.signals.first() {
                break Err(TurnWait::Interrupted(received));
            }
            match rx.try_recv() {
                Ok(_) | Err(std::sync::mpsc::TryRecvError::Disconnected) => break Ok(true),
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
        };
        watch.abort();
        Ok(outcome)
    }

    fn notice_after(&self) -> Option<Duration> {
        match self.config.verbosity {
            Verbosity::Quiet => None,
            Verbosity::Verbose => Some(Duration::ZERO),
            Verbosity::Normal => Some(Duration::from_secs(1)),
        }
    }

    fn load(&self) -> Result<Record, Failure> {
        let key = format!("{}state", self.prefix());
        let bytes = self.call(None, |mut c| {
            let key = key.clone();
            async move {
                let resp = c.get(key, None).await?;
                Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
            }
        })?;
        Ok(
            match bytes.and_then(|b| serde_json::from_slice::<Record>(&b).ok()) {
                Some(record) => record,
                None => Record {
                    state: State::fresh(crate::sidecar::now_ms(), self.fingerprint()?),
                    intent: None,
                },
            },
        )
    }

    /// Write the state, only while `lock` is still ours (its key, at its revision).
    fn store(&self, lock: &WriteGuard, record: &Record) -> Result<(), Failure> {
        let key = format!("{}state", self.prefix());
        let value = serde_json::to_string(record).expect("a record always serializes");
        let (lock_key, rev) = (lock.link.key.clone(), lock.link.rev);
        let ours = self.call(None, |mut c| {
            let (key, value, lock_key) = (key.clone(), value.clone(), lock_key.clone());
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(lock_key, CompareOp::Equal, rev)])
                    .and_then([TxnOp::put(key, value, None)]);
                Ok(c.txn(txn).await?.succeeded())
            }
        })?;
        if ours { Ok(()) } else { Err(self.lost()) }
    }

    fn fingerprint(&self) -> Result<Fingerprint, Failure> {
        let session = self.config.key.path();
        Fingerprint::of_shared(session)
            .map_err(|e| Failure::io("cannot read the session file's fingerprint", &e, session))
    }

    fn ticket(&self, turn: Option<Link>) -> Ticket {
        Ticket {
            turn,
            client: self.client.borrow().clone(),
            rt: self.rt.handle().clone(),
            lease: self.target.lease,
        }
    }
}

/// Keep the lease alive from the runtime's thread: a renewal every third of the TTL. When
/// none has succeeded for the TTL (minus a margin), counted from the send time of the last one
/// that did (the server starts its clock before its reply arrives), the lease is lost.
fn keep_alive(
    rt: &tokio::runtime::Runtime,
    client: Client,
    lease: i64,
    ttl: Duration,
    granted: Instant,
) {
    let margin = (ttl / 5).min(Duration::from_secs(2));
    rt.spawn(async move {
        let mut last_ok = granted;
        let mut keeper = None;
        loop {
            if Instant::now() >= last_ok + ttl.saturating_sub(margin) {
                signal::lose_lease();
                return;
            }
            let sent = Instant::now();
            let renewed = tokio::time::timeout(CALL.min(ttl / 3), async {
                if keeper.is_none() {
                    let mut c = client.clone();
                    keeper = Some(c.lease_keep_alive(lease).await?);
                }
                let (k, stream) = keeper.as_mut().expect("set above");
                k.keep_alive().await?;
                match stream.message().await? {
                    Some(resp) if resp.ttl() > 0 => Ok(true),
                    Some(_) => Ok(false), // expired on the server
                    None => Err(etcd_client::Error::InvalidArgs(
                        "keep-alive stream ended".into(),
                    )),
                }
            })
            .await;
            match renewed {
                Ok(Ok(true)) => last_ok = sent,
                Ok(Ok(false)) => {
                    signal::lose_lease();
                    return;
                }
                _ => keeper = None,
            }
            tokio::time::sleep(ttl / 3).await;
        }
    });
}

impl Coordinator for Etcd<'_> {
    type Ticket = Ticket;
    type WriteLock = WriteGuard;
    type Ahead = (String, i64, Holder);

    fn write_lock(&self, _ticket: Option<&Ticket>, phase: Phase) -> Result<WriteGuard, Failure> {
        let config = self.config;
        let session = config.key.path();
        let timeout = if phase == Phase::AfterWindow {
            config.after_window_timeout
        } else {
            config.lock_timeout
        };
        let deadline = signal::deadline(timeout);
        let link = self.join_chain("lock")?;
        let guard = WriteGuard {
            link,
            client: self.client.borrow().clone(),
            rt: self.rt.handle().clone(),
            lease: self.target.lease,
        };
        let after = if phase == Phase::AfterWindow {
            " after the window"
        } else {
            ""
        };
        while let Some((key, from, holder)) = self.ahead_in("lock", &guard.link)? {
            let mut text = || {
                format!(
                    "waiting for the write lock on {} (etcd), held by pid {} on {} ({})",
                    session.display(),
                    holder.pid,
                    holder.host,
                    holder.mode
                )
            };
            let notice = self
                .notice_after()
                .map(|a| (a, &mut text as &mut dyn FnMut() -> String));
            match self.wait_deleted(&key, from, deadline, notice)? {
                Ok(_) | Err(TurnWait::Ended) => {}
                Err(TurnWait::TimedOut) => {
                    let what = if timeout.is_zero() {
                        format!("the write lock is busy{after} (etcd)")
                    } else {
                        format!(
                            "timed out after {} waiting for the write lock{after} (etcd)",
                            humantime::format_duration(timeout)
                        )
                    };
                    return Err(Failure::busy(config.conflict_code, what, session));
                }
                Err(TurnWait::Interrupted(r)) => {
                    return Err(Failure::interrupted(r.signal, "the write lock", session));
                }
            }
        }
        // An unfinished commit of a holder that died: roll it back first.
        let mut record = self.load()?;
        if let Some(intent) = record.intent {
            let recovery = commit::recover(session, &self.sidecar, &intent)
                .map_err(|e| Failure::io("cannot roll back an unfinished commit", &e, session))?;
            if let Recovery::RolledBack { bytes, .. } = recovery {
                config.notice(&format!(
                    "rolled back an unfinished commit of {bytes} bytes to {} (its wrapper died \
                     while appending)",
                    session.display()
                ));
                record.state.own(self.fingerprint()?);
            }
            record.intent = None;
            self.store(&guard, &record)?;
        }
        Ok(guard)
    }

    fn issue(&self, _lock: &WriteGuard) -> Result<Ticket, Failure> {
        Ok(self.ticket(None))
    }

    fn label(ticket: &Ticket) -> String {
        ticket.turn.as_ref().map_or_else(
            || format!("etcd.{}", std::process::id()),
            |l| format!("0.{}", l.rev),
        )
    }

    fn join(&self, _lock: &WriteGuard, ticket: &mut Ticket) -> Result<(), Failure> {
        ticket.turn = Some(self.join_chain("turn")?);
        Ok(())
    }

    fn ahead(&self, ticket: &Ticket) -> Result<Option<Self::Ahead>, Failure> {
        match &ticket.turn {
            Some(link) => self.ahead_in("turn", link),
            None => Ok(None),
        }
    }

    fn count_ahead(&self, ticket: &Ticket) -> u64 {
        let Some(link) = &ticket.turn else { return 0 };
        let prefix = format!("{}turn/", self.prefix());
        let rev = link.rev;
        self.call(None, |mut c| {
            let prefix = prefix.clone();
            async move {
                let resp = c
                    .get(
                        prefix,
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_count_only()
                                .with_max_create_revision(rev - 1),
                        ),
                    )
                    .await?;
                Ok(u64::try_from(resp.count()).unwrap_or(0))
            }
        })
        .unwrap_or(0)
    }

    fn wait_turn(
        &self,
        ahead: Self::Ahead,
        deadline: Option<Instant>,
    ) -> Result<TurnWait, Failure> {
        let (key, from, holder) = ahead;
        let session = self.config.key.path().to_owned();
        let mut text = || {
            format!(
                "waiting for a prompt turn on {} (etcd), next is pid {} on {} ({})",
                session.display(),
                holder.pid,
                holder.host,
                holder.command
            )
        };
        let notice = self
            .notice_after()
            .map(|a| (a, &mut text as &mut dyn FnMut() -> String));
        Ok(match self.wait_deleted(&key, from, deadline, notice)? {
            Ok(_) => TurnWait::Ended,
            Err(other) => other,
        })
    }

    fn activity(&self, _ticket: &Ticket, _activity: Activity) {}

    fn observe(&self, lock: &WriteGuard) -> Result<State, Failure> {
        let mut record = self.load()?;
        if record.state.observe(self.fingerprint()?) {
            self.store(lock, &record)?;
        }
        Ok(record.state)
    }

    fn fence(&self, lock: &WriteGuard) -> Result<Fence, Failure> {
        // A fresh state must be stored, or every reader would make a lineage of its own.
        let record = self.load()?;
        self.store(lock, &record)?;
        Ok(self.observe(lock)?.fence())
    }

    fn check(&self, lock: &WriteGuard, fence: &Fence) -> Result<Verdict, Failure> {
        Ok(self.observe(lock)?.verdict(fence, self.config.strict))
    }

    fn verify(&self, lock: &WriteGuard) -> Result<(), Failure> {
        let (key, rev) = (lock.link.key.clone(), lock.link.rev);
        let ours = self.call(None, |mut c| {
            let key = key.clone();
            async move {
                let resp = c.get(key, None).await?;
                Ok(resp
                    .kvs()
                    .first()
                    .map(etcd_client::KeyValue::create_revision)
                    == Some(rev))
            }
        })?;
        if ours { Ok(()) } else { Err(self.lost()) }
    }

    fn record_intent(&self, lock: &WriteGuard, intent: &Intent) -> Result<(), Failure> {
        let mut record = self.load()?;
        record.intent = Some(*intent);
        self.store(lock, &record)
    }

    fn publish_owned(&self, lock: &WriteGuard) -> Result<State, Failure> {
        let mut record = self.load()?;
        record.state.own(self.fingerprint()?);
        record.intent = None;
        self.store(lock, &record)?;
        Ok(record.state)
    }

    fn clear_intent(&self, lock: &WriteGuard) -> Result<(), Failure> {
        let mut record = self.load()?;
        if record.intent.take().is_some() {
            self.store(lock, &record)?;
        }
        Ok(())
    }

    fn leave(&self, ticket: Ticket) -> Result<(), Failure> {
        drop(ticket);
        Ok(())
    }
}

/// `status --coord etcd://...`: the holders of the write lock and the turns, from etcd.
pub fn status(target: &EtcdTarget, session: &Path) -> Result<serde_json::Value, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::io("cannot start the etcd client", &e, session))?;
    let prefix = prefix(&target.name);
    let endpoints = target.endpoints.clone();
    let got = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut c = Client::connect(endpoints, None).await?;
            let list = |chain: &'static str| {
                let p = format!("{prefix}{chain}/");
                let mut c = c.clone();
                async move {
                    let resp = c
                        .get(
                            p,
                            Some(
                                GetOptions::new()
                                    .with_prefix()
                                    .with_sort(SortTarget::Create, SortOrder::Ascend),
                            ),
                        )
                        .await?;
                    Ok::<_, etcd_client::Error>(
                        resp.kvs()
                            .iter()
                            .map(|kv| {
                                let mut v: serde_json::Value =
                                    serde_json::from_slice(kv.value()).unwrap_or_default();
                                v["revision"] = kv.create_revision().into();
                                v
                            })
                            .collect::<Vec<_>>(),
                    )
                }
            };
            let lock = list("lock").await?;
            let turns = list("turn").await?;
            let state = c.get(format!("{prefix}state"), None).await?;
            let state: serde_json::Value = state
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice(kv.value()).ok())
                .unwrap_or_default();
            Ok::<_, etcd_client::Error>((lock, turns, state))
        })
        .await
    });
    let unavailable = |e: &dyn std::fmt::Display| {
        Failure::new(
            Kind::Unavailable,
            format!("etcd is unavailable at {}: {e}", target.endpoints.join(",")),
            session,
        )
    };
    let (lock, turns, state) = match got {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(unavailable(&e)),
        Err(e) => return Err(unavailable(&e)),
    };
    Ok(serde_json::json!({
        "session": session.to_string_lossy(),
        "coord": format!("etcd://{}", target.endpoints.join(",").replace("http://", "")),
        "name": target.name,
        "lock": { "held": !lock.is_empty(), "holder": lock.first(), "waiting": lock.len().saturating_sub(1) },
        "queue": turns,
        "fence": state.get("state"),
        "unfinished_commit": state.get("intent"),
    }))
}
