//! Exec sessions: every exec is a session with a bounded output log addressed by byte offset,
//! so clients can detach, come back and replay what they missed.
//!
//! Output goes from the process into the session's ring (never into per-client queues); each
//! attached client reads the ring at its own pace. Output an attached client has not read yet
//! is never dropped: the process is held back instead (as a pipe would), so a slow client
//! slows the process and a client that never reads costs at most the ring. With no client
//! attached the ring keeps the latest output for replay and the process runs freely.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

/// Bytes of output kept per session for replay.
pub const RING_BYTES: usize = 1 << 20;
/// Exited sessions kept for late attaches.
const KEEP_EXITED: usize = 64;
/// How long an exited session stays listed.
const EXITED_TTL: Duration = Duration::from_secs(300);

/// Stream ids inside the ring (TTY output is stored as stdout).
pub const OUT: u8 = sprites_api::exec::STREAM_STDOUT;

/// What a client sends to the process.
#[derive(Debug)]
pub enum Input {
    /// Bytes for stdin.
    Data(Bytes),
    /// Close stdin.
    Eof,
}

/// One chunk of output at a byte offset.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Offset of the first byte in the session's whole output.
    pub offset: u64,
    /// Stream id (1 stdout, 2 stderr).
    pub stream: u8,
    /// The bytes.
    pub data: Bytes,
}

/// Mutable part of a session.
#[derive(Debug)]
pub struct State {
    chunks: VecDeque<Chunk>,
    kept: usize,
    /// Offset just past the last byte ever written.
    pub end: u64,
    /// Exit byte once the process ended.
    pub exit: Option<u8>,
    exited_at: Option<Instant>,
    /// Clients attached now.
    pub attached: usize,
    /// Read position of each attached reader.
    readers: BTreeMap<u64, u64>,
    next_reader: u64,
    /// Last input or output.
    pub last_activity: Instant,
    /// Last activity as wall time (ms).
    pub last_activity_ms: i64,
    /// Terminal size.
    pub size: (u16, u16),
    recent: VecDeque<(Instant, usize)>,
}

/// A running or recently exited exec.
#[derive(Debug)]
pub struct Session {
    /// String id (JSON string on the wire).
    pub id: String,
    /// Command line.
    pub command: String,
    /// Working directory.
    pub workdir: String,
    /// Creation, Unix ms.
    pub created_ms: i64,
    /// PTY mode.
    pub tty: bool,
    /// Process group (= pid of the session leader).
    pub pgid: i32,
    /// How long the process may outlive its last client; `None` = forever.
    pub max_run_after_disconnect: Option<Duration>,
    /// PTY master, for resizes.
    pub pty: Option<Arc<OwnedFd>>,
    /// Sends input to the process.
    pub input: mpsc::Sender<Input>,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    notices: tokio::sync::broadcast::Sender<String>,
    detach_epoch: AtomicU64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Session {
    /// A new session; output is pushed with [`Session::push`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        command: String,
        workdir: String,
        tty: bool,
        pgid: i32,
        size: (u16, u16),
        max_run_after_disconnect: Option<Duration>,
        pty: Option<Arc<OwnedFd>>,
        input: mpsc::Sender<Input>,
    ) -> Self {
        Self {
            id,
            command,
            workdir,
            created_ms: now_ms(),
            tty,
            pgid,
            max_run_after_disconnect,
            pty,
            input,
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                kept: 0,
                end: 0,
                exit: None,
                exited_at: None,
                attached: 0,
                readers: BTreeMap::new(),
                next_reader: 0,
                last_activity: Instant::now(),
                last_activity_ms: now_ms(),
                size,
                recent: VecDeque::new(),
            }),
            version: watch::channel(0).0,
            notices: tokio::sync::broadcast::channel(64).0,
            detach_epoch: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Sends a text message (port notifications) to every attached WebSocket client.
    pub fn notice(&self, text: String) {
        let _ = self.notices.send(text);
    }

    /// Subscribes to text messages for clients.
    pub fn notices(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.notices.subscribe()
    }

    /// Subscribes to changes (output, exit).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Appends output.
    pub fn push(&self, stream: u8, data: Bytes) {
        if data.is_empty() {
            return;
        }
        {
            let mut st = self.lock();
            let n = data.len();
            let offset = st.end;
            st.end += n as u64;
            st.kept += n;
            st.chunks.push_back(Chunk {
                offset,
                stream,
                data,
            });
            // Never evict what an attached reader has yet to read.
            let floor = st.readers.values().min().copied().unwrap_or(u64::MAX);
            while st.kept > RING_BYTES && st.chunks.len() > 1 {
                let front_end = st
                    .chunks
                    .front()
                    .map(|c| c.offset + c.data.len() as u64)
                    .unwrap_or(0);
                if front_end > floor {
                    break;
                }
                if let Some(c) = st.chunks.pop_front() {
                    st.kept -= c.data.len();
                }
            }
            let now = Instant::now();
            st.last_activity = now;
            st.last_activity_ms = now_ms();
            st.recent.push_back((now, n));
            while st
                .recent
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(5))
            {
                st.recent.pop_front();
            }
        }
        self.bump();
    }

    /// Records the exit.
    pub fn finish(&self, code: u8) {
        {
            let mut st = self.lock();
            st.exit = Some(code);
            st.exited_at = Some(Instant::now());
        }
        self.bump();
    }

    /// Output from `from` on (clamped to what is still kept), the new cursor and the exit.
    pub fn read_from(&self, from: u64) -> (Vec<Chunk>, u64, Option<u8>) {
        let st = self.lock();
        let mut out = Vec::new();
        for c in &st.chunks {
            let end = c.offset + c.data.len() as u64;
            if end <= from {
                continue;
            }
            if c.offset >= from {
                out.push(c.clone());
            } else {
                let skip = (from - c.offset) as usize;
                out.push(Chunk {
                    offset: from,
                    stream: c.stream,
                    data: c.data.slice(skip..),
                });
            }
        }
        let cursor = st.end.max(from.min(st.end));
        (out, cursor, st.exit)
    }

    /// Offset just past the last byte written.
    pub fn end_offset(&self) -> u64 {
        self.lock().end
    }

    /// Offset where replay of everything kept starts.
    pub fn start_offset(&self) -> u64 {
        let st = self.lock();
        st.chunks.front().map(|c| c.offset).unwrap_or(st.end)
    }

    /// Exit byte, if the process ended.
    pub fn exit(&self) -> Option<u8> {
        self.lock().exit
    }

    /// Marks input activity.
    pub fn touch(&self) {
        let mut st = self.lock();
        st.last_activity = Instant::now();
        st.last_activity_ms = now_ms();
    }

    /// Current terminal size.
    pub fn size(&self) -> (u16, u16) {
        self.lock().size
    }

    /// Resizes the PTY.
    pub fn resize(&self, cols: u16, rows: u16) {
        let Some(pty) = &self.pty else { return };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on an open PTY master.
        unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        self.lock().size = (cols, rows);
    }

    /// Sends `sig` to the session's process group.
    pub fn signal(&self, sig: i32) -> bool {
        // SAFETY: plain kill(2) on our own process group.
        unsafe { libc::kill(-self.pgid, sig) == 0 }
    }

    /// Whether the process may produce more: no attached reader is a full ring behind.
    pub fn has_room(&self) -> bool {
        let st = self.lock();
        match st.readers.values().min() {
            Some(min) => st.end.saturating_sub(*min) <= RING_BYTES as u64,
            None => true,
        }
    }

    /// Waits until [`Session::has_room`].
    pub async fn wait_room(&self) {
        let mut w = self.watch();
        while !self.has_room() {
            if w.changed().await.is_err() {
                return;
            }
        }
    }

    /// A reader attached at `cursor`; returns its id for [`Session::advance`] and
    /// [`Session::detach`].
    pub fn attach(&self, cursor: u64) -> u64 {
        let id = {
            let mut st = self.lock();
            st.attached += 1;
            st.next_reader += 1;
            let id = st.next_reader;
            st.readers.insert(id, cursor);
            id
        };
        self.detach_epoch.fetch_add(1, Ordering::SeqCst);
        id
    }

    /// Where a reader stands.
    pub fn reader_cursor(&self, reader: u64) -> u64 {
        let st = self.lock();
        st.readers.get(&reader).copied().unwrap_or(st.end)
    }

    /// Records how far a reader got, letting a held-back process go on.
    pub fn advance(&self, reader: u64, cursor: u64) {
        let moved = {
            let mut st = self.lock();
            match st.readers.get_mut(&reader) {
                Some(c) if *c != cursor => {
                    *c = cursor;
                    true
                }
                _ => false,
            }
        };
        if moved {
            self.bump();
        }
    }

    /// A reader left. When the last one leaves, the process gets
    /// `max_run_after_disconnect` before its group is killed.
    pub fn detach(self: &Arc<Self>, reader: u64) {
        let last = {
            let mut st = self.lock();
            st.readers.remove(&reader);
            st.attached = st.attached.saturating_sub(1);
            st.attached == 0 && st.exit.is_none()
        };
        // A reader that left no longer holds the process back.
        self.bump();
        let Some(limit) = self.max_run_after_disconnect else {
            return;
        };
        if !last {
            return;
        }
        let epoch = self.detach_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let still_alone = me.lock().attached == 0;
            if still_alone && me.detach_epoch.load(Ordering::SeqCst) == epoch && me.exit().is_none()
            {
                tracing::info!(id = %me.id, "no client came back; ending the session");
                me.signal(libc::SIGKILL);
            }
        });
    }

    /// Attached readers, and whether the process produced output within `window`.
    pub fn activity(&self, window: Duration) -> (usize, bool) {
        let st = self.lock();
        let recent = st.exit.is_none() && st.last_activity.elapsed() <= window;
        (st.attached, recent)
    }

    /// JSON of `GET /exec`.
    pub fn summary(&self) -> serde_json::Value {
        let st = self.lock();
        let now = Instant::now();
        let recent: usize = st
            .recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= Duration::from_secs(5))
            .map(|(_, n)| n)
            .sum();
        serde_json::json!({
            "id": self.id,
            "command": self.command,
            "workdir": self.workdir,
            "created": sprites_api::timefmt::format_millis(self.created_ms),
            "bytes_per_second": recent as f64 / 5.0,
            "is_active": st.exit.is_none() && now.duration_since(st.last_activity) <= Duration::from_secs(5),
            "last_activity": sprites_api::timefmt::format_millis(st.last_activity_ms),
            "tty": self.tty,
            "exited": st.exit.is_some(),
            "exit_code": st.exit,
            "attached_clients": st.attached,
        })
    }

    fn expired(&self, now: Instant) -> bool {
        self.lock()
            .exited_at
            .is_some_and(|t| now.duration_since(t) > EXITED_TTL)
    }
}

/// All sessions of the sprite.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<Session>>>,
}

impl Registry {
    /// Allocates the next session id.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Registers a session under its numeric id.
    pub fn insert(&self, n: u64, s: Arc<Session>) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(n, s);
        // Forget old exited sessions beyond the budget.
        let now = Instant::now();
        m.retain(|_, s| !s.expired(now));
        let exited: Vec<u64> = m
            .iter()
            .filter(|(_, s)| s.exit().is_some())
            .map(|(k, _)| *k)
            .collect();
        if exited.len() > KEEP_EXITED {
            for k in &exited[..exited.len() - KEEP_EXITED] {
                m.remove(k);
            }
        }
    }

    /// Finds a session by id.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let n: u64 = id.parse().ok()?;
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&n)
            .cloned()
    }

    /// Every session, oldest first.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let (tx, _rx) = mpsc::channel(1);
        Session::new(
            "1".into(),
            "x".into(),
            "/".into(),
            false,
            1,
            (80, 24),
            None,
            None,
            tx,
        )
    }

    #[test]
    fn replay_by_offset_and_bound() {
        let s = session();
        s.push(1, Bytes::from_static(b"hello "));
        s.push(2, Bytes::from_static(b"world"));
        let (c, cur, exit) = s.read_from(0);
        assert_eq!(c.len(), 2);
        assert_eq!((cur, exit), (11, None));
        let (c, _, _) = s.read_from(3);
        assert_eq!(&c[0].data[..], b"lo ");
        assert_eq!(c[0].offset, 3);
        let (c, cur, _) = s.read_from(11);
        assert!(c.is_empty());
        assert_eq!(cur, 11);
        s.finish(0);
        assert_eq!(s.read_from(11).2, Some(0));
        // The ring stays bounded.
        let big = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..40 {
            s.push(1, big.clone());
        }
        let kept: usize = s.read_from(0).0.iter().map(|c| c.data.len()).sum();
        assert!(kept <= RING_BYTES + big.len(), "{kept}");
        assert!(s.start_offset() > 0);
    }

    #[test]
    fn attached_readers_hold_output_back() {
        let s = session();
        let r = s.attach(0);
        let big = Bytes::from(vec![b'y'; 256 * 1024]);
        for _ in 0..4 {
            assert!(s.has_room());
            s.push(1, big.clone());
        }
        s.push(1, big.clone());
        assert!(
            !s.has_room(),
            "a reader a full ring behind stops the producer"
        );
        assert_eq!(s.start_offset(), 0, "nothing unread is evicted");
        s.advance(r, 5 * 256 * 1024);
        assert!(s.has_room());
    }
}
