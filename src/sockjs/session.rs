//! Session state of the HTTP transports, shared by the handler (through [`Outbound`] and the
//! inbound channel) and by the requests that come and go (receivers, senders). One receiver at a
//! time drains the outbound queue; a supervisor task per session enforces `disconnect_delay` and
//! the queue stall rule. (The WebSocket transports need none of this: `ws.rs`.)

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{Sink, SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    CLOSE_INTERNAL_ERROR, CLOSE_INTERRUPTED, CLOSE_NORMAL, CLOSE_QUEUE_FULL, SessionHandler,
    SockJsError, SockJsSend,
};

/// Inbound messages buffered between the transports and the handler; senders wait beyond this,
/// which pushes back on the client (its next `xhr_send` or WebSocket read waits). A futures
/// channel, which allocates per message: tokio's allocates a block of 32 slots (1.3 KB) up
/// front, carried by every idle session.
const INBOUND_CAPACITY: usize = 32;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_queued_bytes: usize,
    pub disconnect_delay: Duration,
}

/// Counts live sessions (all transports) against `max_sessions`.
pub(crate) struct Registry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    live: Arc<AtomicUsize>,
    max_sessions: usize,
}

/// One slot of `max_sessions`, released when the session's last reference goes.
pub(crate) struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `max_sessions` reached.
#[derive(Debug)]
pub(crate) struct Full;

impl Registry {
    pub(crate) fn new(max_sessions: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            live: Arc::new(AtomicUsize::new(0)),
            max_sessions,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn reserve(&self) -> Option<Permit> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_sessions).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.live.clone()))
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Session>> {
        self.map().get(key).cloned()
    }

    /// The session under `key`, or a new one (not started yet: the caller starts it once the map
    /// lock is released, so handler code never runs under it). Two concurrent first requests get
    /// the same session.
    pub(crate) fn get_or_create(
        &self,
        key: &str,
        limits: Limits,
    ) -> Result<(Arc<Session>, Option<Unstarted>), Full> {
        let mut map = self.map();
        if let Some(session) = map.get(key) {
            return Ok((session.clone(), None));
        }
        let permit = self.reserve().ok_or(Full)?;
        let (session, unstarted) = Session::new(key.to_owned(), permit, limits);
        map.insert(key.to_owned(), session.clone());
        Ok((session, Some(unstarted)))
    }

    fn remove(&self, key: &str, session: &Arc<Session>) {
        let mut map = self.map();
        if map.get(key).is_some_and(|s| Arc::ptr_eq(s, session)) {
            map.remove(key);
        }
    }
}

enum Phase {
    /// Created, `o` not sent yet.
    New,
    Open,
    Closed {
        code: u16,
        reason: String,
    },
}

struct State {
    phase: Phase,
    queue: VecDeque<String>,
    queued_bytes: usize,
    receiver: Option<(u64, CancellationToken)>,
    next_receiver: u64,
    /// Since when no receiver is attached (meaningful while `receiver` is `None`).
    idle_since: Instant,
    /// Since when `queued_bytes >= max_queued_bytes` without a receiver taking anything.
    full_since: Option<Instant>,
    sink_waker: Option<Waker>,
    inbound: Option<mpsc::Sender<io::Result<Bytes>>>,
}

pub(crate) struct Session {
    /// Map key (the session id). WebSocket sessions are not here: their handler runs on the
    /// connection itself (`ws.rs`).
    key: String,
    limits: Limits,
    state: Mutex<State>,
    wake: Notify,
    /// Wakes the supervisor when a deadline may have come nearer (a receiver left, the
    /// queue filled up, the session closed).
    deadlines_changed: Notify,
    closed: CancellationToken,
    _permit: Permit,
}

/// A receiver's claim on the session; `kick` fires when the session drops it (stall).
pub(crate) struct ReceiverId {
    pub id: u64,
    pub kick: CancellationToken,
}

pub(crate) enum Attach {
    /// Another receiver is attached: answer `c[2010,...]`.
    Busy,
    /// The session is closed: pending messages (if any), then the close frame.
    Closed {
        data: Vec<String>,
        code: u16,
        reason: String,
    },
    /// Attached; `open` means this receiver must send `o` first.
    Attached { rid: ReceiverId, open: bool },
}

pub(crate) enum Take {
    Messages(Vec<String>),
    Closed {
        code: u16,
        reason: String,
    },
    /// This receiver is no longer attached (kicked).
    Gone,
    Empty,
}

fn attached(st: &State, id: u64) -> bool {
    st.receiver.as_ref().is_some_and(|(rid, _)| *rid == id)
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, SockJsError::SessionClosed)
}

impl Session {
    /// A new session; [`Unstarted::start`] runs its handler and supervisor.
    pub(crate) fn new(key: String, permit: Permit, limits: Limits) -> (Arc<Session>, Unstarted) {
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        let session = Arc::new(Session {
            key,
            limits,
            state: Mutex::new(State {
                phase: Phase::New,
                queue: VecDeque::new(),
                queued_bytes: 0,
                receiver: None,
                next_receiver: 0,
                idle_since: Instant::now(),
                full_since: None,
                sink_waker: None,
                inbound: Some(tx),
            }),
            wake: Notify::new(),
            deadlines_changed: Notify::new(),
            closed: CancellationToken::new(),
            _permit: permit,
        });
        let unstarted = Unstarted {
            session: session.clone(),
            inbound: rx,
        };
        (session, unstarted)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves after the session changed (messages queued, closed); may resolve spuriously.
    pub(crate) async fn changed(&self) {
        self.wake.notified().await;
    }

    pub(crate) fn attach(&self) -> Attach {
        let mut st = self.lock();
        if st.receiver.is_some() {
            return Attach::Busy;
        }
        let open = match &st.phase {
            Phase::Closed { code, reason } => {
                let (code, reason) = (*code, reason.clone());
                // Like sockjs-node: every request to a closed session restarts its timeout.
                st.idle_since = Instant::now();
                let data: Vec<String> = st.queue.drain(..).collect();
                st.queued_bytes = 0;
                return Attach::Closed { data, code, reason };
            }
            Phase::New => {
                st.phase = Phase::Open;
                true
            }
            Phase::Open => false,
        };
        st.next_receiver += 1;
        let rid = ReceiverId {
            id: st.next_receiver,
            kick: CancellationToken::new(),
        };
        st.receiver = Some((rid.id, rid.kick.clone()));
        Attach::Attached { rid, open }
    }

    /// Takes queued messages (at least one, then up to `max_bytes`) for receiver `id`.
    pub(crate) fn take(&self, id: u64, max_bytes: usize) -> Take {
        let mut st = self.lock();
        if !attached(&st, id) {
            return Take::Gone;
        }
        if st.queue.is_empty() {
            return match &st.phase {
                Phase::Closed { code, reason } => Take::Closed {
                    code: *code,
                    reason: reason.clone(),
                },
                _ => Take::Empty,
            };
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(front) = st.queue.front() {
            if !out.is_empty() && bytes + front.len() > max_bytes {
                break;
            }
            bytes += front.len();
            if let Some(m) = st.queue.pop_front() {
                out.push(m);
            }
        }
        st.queued_bytes -= bytes;
        let waker = if st.queued_bytes < self.limits.max_queued_bytes {
            st.full_since = None;
            st.sink_waker.take()
        } else {
            None
        };
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Take::Messages(out)
    }

    /// Receiver `id` leaves. A receiver that broke off (`aborted`) closes an open session, as in
    /// sockjs-node: messages may have been lost with it.
    pub(crate) fn detach(&self, id: u64, aborted: bool) {
        let mut st = self.lock();
        if !attached(&st, id) {
            return;
        }
        st.receiver = None;
        st.idle_since = Instant::now();
        let interrupt = aborted && !matches!(st.phase, Phase::Closed { .. });
        drop(st);
        self.deadlines_changed.notify_one();
        if interrupt {
            self.close(CLOSE_INTERRUPTED, "Connection interrupted", true);
        }
    }

    /// Closes the session (first close wins): the handler's inbound ends, its sink fails, and
    /// receivers get pending messages (unless `discard`) then `c[code,reason]`.
    pub(crate) fn close(&self, code: u16, reason: &str, discard: bool) -> bool {
        let mut st = self.lock();
        if matches!(st.phase, Phase::Closed { .. }) {
            return false;
        }
        tracing::debug!(session = ?self.key, code, reason, "SockJS session closed");
        st.phase = Phase::Closed {
            code,
            reason: reason.to_owned(),
        };
        if discard {
            st.queue.clear();
            st.queued_bytes = 0;
        }
        st.full_since = None;
        st.inbound = None;
        let waker = st.sink_waker.take();
        drop(st);
        self.closed.cancel();
        self.wake.notify_one();
        self.deadlines_changed.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Hands client messages to the handler, in order; waits while its inbound buffer is full.
    /// Messages for a closed session are dropped (sockjs-node ignores them too).
    pub(crate) async fn deliver(&self, messages: Vec<String>) {
        let Some(mut tx) = self.lock().inbound.clone() else {
            return;
        };
        for m in messages {
            tokio::select! {
                biased;
                // Drop our sender promptly so the handler's inbound can end.
                _ = self.closed.cancelled() => return,
                sent = tx.send(Ok(Bytes::from(m))) => if sent.is_err() { return },
            }
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        if matches!(st.phase, Phase::Closed { .. }) {
            return Poll::Ready(Err(closed_error()));
        }
        if st.queued_bytes >= self.limits.max_queued_bytes {
            let filled = st.full_since.is_none();
            st.full_since.get_or_insert_with(Instant::now);
            st.sink_waker = Some(cx.waker().clone());
            drop(st);
            if filled {
                self.deadlines_changed.notify_one();
            }
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn push(&self, item: SockJsSend) -> io::Result<()> {
        match item {
            SockJsSend::Message(m) => {
                let mut st = self.lock();
                if matches!(st.phase, Phase::Closed { .. }) {
                    return Err(closed_error());
                }
                st.queued_bytes += m.len();
                st.queue.push_back(m);
                let filled =
                    st.queued_bytes >= self.limits.max_queued_bytes && st.full_since.is_none();
                if filled {
                    st.full_since = Some(Instant::now());
                }
                drop(st);
                self.wake.notify_one();
                if filled {
                    self.deadlines_changed.notify_one();
                }
                Ok(())
            }
            SockJsSend::Close(code, reason) => {
                self.close(code, &reason, false);
                Ok(())
            }
        }
    }

    /// When [`Session::tick`] next has something to do, if ever (until a change is notified
    /// on `deadlines_changed`). May be early: `tick` checks every condition itself.
    fn next_deadline(&self) -> Option<Instant> {
        let delay = self.limits.disconnect_delay;
        let st = self.lock();
        if st.receiver.is_some() && st.full_since.is_none() {
            return None;
        }
        if matches!(st.phase, Phase::Closed { .. }) {
            // A receiver still attached to a closed session detaches (and notifies).
            return st.receiver.is_none().then_some(st.idle_since + delay);
        }
        let idle = st.receiver.is_none().then_some(st.idle_since + delay);
        let stalled = st.full_since.map(|t| t + delay);
        idle.into_iter().chain(stalled).min()
    }

    /// Applies the timeouts; true when the session is finished and can be forgotten.
    fn tick(&self, now: Instant) -> bool {
        let delay = self.limits.disconnect_delay;
        let mut st = self.lock();
        if matches!(st.phase, Phase::Closed { .. }) {
            // Lingers to repeat the close to a client that comes back.
            return st.receiver.is_none() && now.duration_since(st.idle_since) >= delay;
        }
        let stalled = st
            .full_since
            .is_some_and(|t| now.duration_since(t) >= delay);
        let idle = st.receiver.is_none() && now.duration_since(st.idle_since) >= delay;
        if !(stalled || idle) {
            return false;
        }
        let (code, reason) = if st.queued_bytes >= self.limits.max_queued_bytes {
            tracing::info!(
                queued_bytes = st.queued_bytes,
                "SockJS client stopped reading; closing session with {CLOSE_QUEUE_FULL}"
            );
            (CLOSE_QUEUE_FULL, "Outbound queue full")
        } else {
            (CLOSE_INTERRUPTED, "Connection interrupted")
        };
        if let Some((_, kick)) = st.receiver.take() {
            kick.cancel();
        }
        st.idle_since = now;
        drop(st);
        self.close(code, reason, true);
        false
    }
}

/// A session whose handler has not been started.
pub(crate) struct Unstarted {
    session: Arc<Session>,
    inbound: mpsc::Receiver<io::Result<Bytes>>,
}

impl Unstarted {
    pub(crate) fn start<H: SessionHandler>(self, handler: &H, registry: &Arc<Registry>) {
        let inbound = self.inbound.boxed();
        let outbound = Box::pin(Outbound(self.session.clone()));
        let task = tokio::spawn(handler.start(inbound, outbound));
        tokio::spawn(supervise(self.session, registry.clone(), task));
    }
}

/// Runs the session's clock and notices the handler's end. It sleeps until the session's next
/// deadline instead of ticking: a session has none while a receiver is attached, and a tick per
/// session per second was most of an idle gateway's CPU.
async fn supervise(session: Arc<Session>, registry: Arc<Registry>, mut task: JoinHandle<()>) {
    let mut running = true;
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let deadline = session.next_deadline();
        if let Some(deadline) = deadline {
            match &mut timer {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        tokio::select! {
            done = &mut task, if running => {
                running = false;
                match done {
                    Err(e) if e.is_panic() => {
                        tracing::warn!("SockJS session handler panicked");
                        session.close(CLOSE_INTERNAL_ERROR, "Internal error", false);
                    }
                    _ => {
                        session.close(CLOSE_NORMAL, "Normal closure", false);
                    }
                }
            }
            _ = session.deadlines_changed.notified() => {}
            _ = async { timer.as_mut().expect("guarded").await }, if deadline.is_some() => {
                if session.tick(Instant::now()) {
                    registry.remove(&session.key, &session);
                    // The handler task keeps running until it sees its inbound end.
                    return;
                }
            }
        }
    }
}

/// The handler's sink: a bounded queue drained by whichever receiver is attached.
pub(crate) struct Outbound(Arc<Session>);

impl Sink<SockJsSend> for Outbound {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: SockJsSend) -> io::Result<()> {
        self.0.push(item)
    }

    // Delivery depends on the client polling; waiting for it here would serialise every send on
    // a round trip, so flushing only means "queued".
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.close(CLOSE_NORMAL, "Normal closure", false);
        Poll::Ready(Ok(()))
    }
}

/// A receiver's attachment; dropping it without [`Attachment::finish`] means the request broke
/// off.
pub(crate) struct Attachment {
    session: Arc<Session>,
    id: u64,
    finished: bool,
}

impl Attachment {
    pub(crate) fn new(session: Arc<Session>, id: u64) -> Self {
        Self {
            session,
            id,
            finished: false,
        }
    }

    /// Detaches normally (response complete); call before the last bytes go out so the client's
    /// next request never races into "Another connection still open".
    pub(crate) fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.session.detach(self.id, false);
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.finished {
            self.session.detach(self.id, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(5);

    fn session() -> Arc<Session> {
        let registry = Registry::new(10);
        let permit = registry.reserve().expect("room");
        let limits = Limits {
            max_queued_bytes: 10,
            disconnect_delay: DELAY,
        };
        Session::new("k".to_owned(), permit, limits).0
    }

    fn attach(session: &Session) -> u64 {
        match session.attach() {
            Attach::Attached { rid, .. } => rid.id,
            _ => panic!("not attached"),
        }
    }

    #[test]
    fn a_polling_session_between_requests_expires_after_the_disconnect_delay() {
        let session = session();
        let created = session.lock().idle_since;
        assert_eq!(session.next_deadline(), Some(created + DELAY));
        let id = attach(&session);
        assert_eq!(session.next_deadline(), None, "a receiver is attached");
        session.detach(id, false);
        let left = session.lock().idle_since;
        assert_eq!(session.next_deadline(), Some(left + DELAY));
    }

    #[test]
    fn a_full_queue_sets_the_stall_deadline_even_with_a_receiver() {
        let session = session();
        attach(&session);
        session
            .push(SockJsSend::Message("0123456789".into()))
            .expect("open");
        let full = session.lock().full_since.expect("full");
        assert_eq!(session.next_deadline(), Some(full + DELAY));
    }

    #[test]
    fn a_closed_session_lingers_to_repeat_its_close() {
        let polling = session();
        polling.close(CLOSE_NORMAL, "Normal closure", false);
        let since = polling.lock().idle_since;
        assert_eq!(polling.next_deadline(), Some(since + DELAY));
        assert!(!polling.tick(since), "lingers to repeat the close");
        assert!(polling.tick(since + DELAY), "then it is forgotten");
    }
}
