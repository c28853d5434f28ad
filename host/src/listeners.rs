//! Where the two listening sockets come from: passed by systemd (socket
//! activation), handed over by the gateway this process replaces, or bound
//! here. Sockets taken over were never closed, so a connection that arrives
//! while one process stops and the next starts waits in the kernel's queue
//! and is answered: a restart refuses nothing.
//!
//! **Socket activation.** With `LISTEN_PID` naming this process and
//! `LISTEN_FDS` = N, descriptors 3 … 3+N−1 are listening sockets; the one
//! `LISTEN_FDNAMES` names `public` (systemd's `FileDescriptorName=`) serves
//! the plugins, `admin` the admin API; unnamed ones are taken in that order.
//!
//! **Handover.** A running gateway listens on `handover.sock` in its data
//! directory (private to its user). A new `evogate serve` on the same data
//! directory connects and asks; the running one sends copies of both
//! listening sockets (`SCM_RIGHTS`), stops accepting, drains and exits. Its
//! end of the connection closes with its process, after its store is
//! closed: only then does the new process open the store and accept.

use anyhow::Context as _;
#[cfg(unix)]
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
#[cfg(unix)]
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

/// The handover socket's file name in the data directory.
#[cfg(unix)]
pub(crate) const HANDOVER_SOCKET: &str = "handover.sock";
/// What a new process writes to ask for the listeners.
#[cfg(unix)]
const HANDOVER_ASK: &[u8] = b"evogate-handover 1\n";

/// Listening sockets taken over rather than bound here.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// The public listener's socket.
    pub(crate) public: Option<TcpListener>,
    /// The admin listener's socket.
    pub(crate) admin: Option<TcpListener>,
    /// Whether systemd passed them: then they serve whatever the
    /// configuration's addresses say (the socket units name the addresses).
    pub(crate) from_systemd: bool,
}

impl Taken {
    /// The public listener: the one taken over when `listen` asks for its
    /// address (a port of 0 takes any), else one bound to `listen`.
    pub(crate) async fn public(&mut self, listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
        Self::pick(self.public.take(), listen, self.from_systemd, "listen").await
    }

    /// The admin listener, as [`Taken::public`] picks it.
    pub(crate) async fn admin(&mut self, listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
        Self::pick(self.admin.take(), listen, self.from_systemd, "admin.listen").await
    }

    async fn pick(
        taken: Option<TcpListener>,
        listen: SocketAddr,
        from_systemd: bool,
        key: &str,
    ) -> anyhow::Result<tokio::net::TcpListener> {
        if let Some(socket) = taken {
            let addr = socket.local_addr().context("reading a taken socket's address")?;
            // systemd's unit says where to listen; a handed-over socket must be the one asked for.
            if from_systemd || fits(listen, addr) {
                socket.set_nonblocking(true).context("a taken socket")?;
                if from_systemd && !fits(listen, addr) {
                    tracing::info!(socket = %addr, configured = %listen, "{key}: serving the socket systemd passed");
                }
                return tokio::net::TcpListener::from_std(socket).context("a taken socket");
            }
            tracing::warn!(socket = %addr, configured = %listen, "{key} changed: binding it anew instead of the socket handed over");
        }
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen} ({key})"))
    }
}

/// Whether a socket on `actual` serves `listen` (port 0: any port of that address).
fn fits(listen: SocketAddr, actual: SocketAddr) -> bool {
    listen == actual || (listen.port() == 0 && listen.ip() == actual.ip())
}

#[cfg(unix)]
/// The sockets systemd passed this process, if it did (socket activation).
pub(crate) fn from_systemd() -> anyhow::Result<Taken> {
    let var = |name: &str| std::env::var(name).ok();
    let (Some(pid), Some(count)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else { return Ok(Taken::default()) };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        tracing::debug!("LISTEN_FDS is meant for another process: binding the configured addresses");
        return Ok(Taken::default());
    }
    let count: i32 = count.trim().parse().context("LISTEN_FDS is not a number")?;
    anyhow::ensure!((1..=2).contains(&count), "LISTEN_FDS = {count}: evogate takes one or two sockets (public, admin)");
    let names: Vec<String> =
        var("LISTEN_FDNAMES").map(|names| names.split(':').map(str::to_owned).collect()).unwrap_or_default();
    let mut taken = Taken { from_systemd: true, ..Taken::default() };
    let mut unnamed = Vec::new();
    for n in 0..count {
        let fd = 3 + n;
        let socket = owned_listening_socket(fd)?;
        match names.get(n as usize).map(String::as_str) {
            Some("public") if taken.public.is_none() => taken.public = Some(socket),
            Some("admin") if taken.admin.is_none() => taken.admin = Some(socket),
            Some("public" | "admin") => anyhow::bail!("LISTEN_FDNAMES names a socket twice: {names:?}"),
            _ => unnamed.push(socket),
        }
    }
    for socket in unnamed {
        if taken.public.is_none() {
            taken.public = Some(socket);
        } else if taken.admin.is_none() {
            taken.admin = Some(socket);
        }
    }
    Ok(taken)
}

#[cfg(unix)]
/// Descriptor `fd`, passed by systemd, as a listening TCP socket this
/// process owns (closed on exec).
#[allow(unsafe_code)]
fn owned_listening_socket(fd: i32) -> anyhow::Result<TcpListener> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: with LISTEN_PID naming this process, systemd passed it
    // descriptors 3 … 3+LISTEN_FDS−1, open and owned by no one else; each is
    // taken here once, at start.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listening = rustix::net::sockopt::socket_acceptconn(&owned)
        .with_context(|| format!("descriptor {fd} from systemd is not a socket"))?;
    anyhow::ensure!(listening, "descriptor {fd} from systemd is not a listening socket");
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).context("marking a socket close-on-exec")?;
    let socket = TcpListener::from(owned);
    socket.local_addr().with_context(|| format!("descriptor {fd} from systemd is not a TCP socket"))?;
    Ok(socket)
}

#[cfg(unix)]
/// Asks the gateway running on `data_dir`, if any, for its listeners, and
/// waits (at most `wait`) until it has stopped; `None` when none runs there.
pub(crate) fn take_over(data_dir: &Path, wait: Duration) -> anyhow::Result<Option<Taken>> {
    let Some((taken, stream)) = ask(data_dir, wait)? else { return Ok(None) };
    wait_until_gone(stream, wait)?;
    tracing::info!("the gateway before has stopped: its listeners are ours");
    Ok(Some(taken))
}

#[cfg(unix)]
/// Asks the gateway on `data_dir` for its listeners: them, and the
/// connection whose end says it has stopped.
fn ask(data_dir: &Path, wait: Duration) -> anyhow::Result<Option<(Taken, std::os::unix::net::UnixStream)>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let path = data_dir.join(HANDOVER_SOCKET);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(stream) => stream,
        // No file, or one left by a gateway that is gone.
        Err(err) if matches!(err.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(err) => return Err(err).with_context(|| format!("connecting to {}", path.display())),
    };
    tracing::info!(socket = %path.display(), "a gateway runs on this data directory: taking its listeners over");
    stream.set_read_timeout(Some(wait)).context("the handover socket")?;
    stream.write_all(HANDOVER_ASK).context("asking for the listeners")?;
    let mut answer = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &stream,
        &mut [std::io::IoSliceMut::new(&mut answer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .context("receiving the listeners")?;
    let mut sockets: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            sockets.extend(fds);
        }
    }
    anyhow::ensure!(
        received.bytes == 1 && answer[0] == b'H' && sockets.len() == 2,
        "the running gateway did not hand its listeners over"
    );
    let admin = TcpListener::from(sockets.pop().expect("two sockets"));
    let public = TcpListener::from(sockets.pop().expect("two sockets"));
    Ok(Some((Taken { public: Some(public), admin: Some(admin), from_systemd: false }, stream)))
}

#[cfg(unix)]
/// Waits, at most `wait`, for the end of `stream`: the gateway handing
/// over closes it by exiting, after it drained and closed the store.
fn wait_until_gone(mut stream: std::os::unix::net::UnixStream, wait: Duration) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(wait)).context("the handover socket")?;
    let mut rest = [0u8; 64];
    loop {
        match stream.read(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(err).context(format!(
                    "the gateway handing over did not stop within {} s; it keeps the store",
                    wait.as_secs()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
/// Serves handovers on `data_dir`/[`HANDOVER_SOCKET`] from a thread of its
/// own: to the first process of this user that asks, copies of `public` and
/// `admin` are sent, then `release` runs (it starts this gateway's
/// shutdown). That connection is left open until this process exits.
pub(crate) fn serve_handover(
    data_dir: &Path,
    public: OwnedFd,
    admin: OwnedFd,
    release: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let path = data_dir.join(HANDOVER_SOCKET);
    // A file left by a gateway that is gone: this one owns the data directory now.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
    }
    let listener =
        std::os::unix::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::thread::Builder::new()
        .name("evogate-handover".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match hand_over(&stream, &public, &admin) {
                    Ok(()) => {
                        tracing::info!("handing the listeners over to a new gateway process: stopping");
                        let _ = std::fs::remove_file(&path);
                        release();
                        // Closed by the process's exit: the new process waits for that.
                        std::mem::forget(stream);
                        return;
                    }
                    Err(err) => tracing::warn!(error = %format!("{err:#}"), "a handover request was refused"),
                }
            }
        })
        .context("starting the handover thread")?;
    Ok(())
}

#[cfg(unix)]
/// Checks a handover request (this user's, the right words) and sends the sockets.
fn hand_over(stream: &std::os::unix::net::UnixStream, public: &OwnedFd, admin: &OwnedFd) -> anyhow::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::AsFd as _;
    let peer = rustix::net::sockopt::socket_peercred(stream).context("reading the peer's credentials")?;
    anyhow::ensure!(peer.uid == rustix::process::getuid(), "the peer runs as another user");
    stream.set_read_timeout(Some(Duration::from_secs(5))).context("the handover socket")?;
    let mut asked = [0u8; HANDOVER_ASK.len()];
    (&*stream).read_exact(&mut asked).context("reading the request")?;
    anyhow::ensure!(asked == HANDOVER_ASK, "not a handover request");
    let fds = [public.as_fd(), admin.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    anyhow::ensure!(control.push(SendAncillaryMessage::ScmRights(&fds)), "no room for two descriptors");
    rustix::net::sendmsg(stream, &[std::io::IoSlice::new(b"H")], &mut control, SendFlags::empty())
        .context("sending the listeners")?;
    Ok(())
}

/// Without Unix sockets there is no socket activation: the configured addresses are bound.
#[cfg(not(unix))]
pub(crate) fn from_systemd() -> anyhow::Result<Taken> {
    Ok(Taken::default())
}

/// Without Unix sockets there is no handover: a restart binds anew.
#[cfg(not(unix))]
pub(crate) fn take_over(_: &Path, _: Duration) -> anyhow::Result<Option<Taken>> {
    Ok(None)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_socket_fits_the_address_asked_for_or_any_port_of_its_host() {
        let at = |text: &str| text.parse::<SocketAddr>().expect("address");
        assert!(fits(at("127.0.0.1:8080"), at("127.0.0.1:8080")));
        assert!(fits(at("127.0.0.1:0"), at("127.0.0.1:41234")));
        assert!(!fits(at("127.0.0.1:8080"), at("127.0.0.1:8081")));
        assert!(!fits(at("0.0.0.0:0"), at("127.0.0.1:41234")));
    }

    #[test]
    fn a_handover_sends_both_sockets_and_releases_once() {
        let dir = tempfile::tempdir().expect("dir");
        let public = TcpListener::bind("127.0.0.1:0").expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addrs = (public.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let (released, was_released) = std::sync::mpsc::channel();
        serve_handover(dir.path(), public.into(), admin.into(), move || {
            let _ = released.send(());
        })
        .expect("serving");
        assert!(take_over(&dir.path().join("nowhere"), Duration::from_secs(1)).expect("none").is_none());
        let (taken, stream) = ask(dir.path(), Duration::from_secs(5)).expect("asked").expect("a gateway runs");
        let addr = |socket: &Option<TcpListener>| socket.as_ref().and_then(|socket| socket.local_addr().ok());
        assert_eq!((addr(&taken.public), addr(&taken.admin)), (Some(addrs.0), Some(addrs.1)), "the same sockets");
        was_released.recv_timeout(Duration::from_secs(5)).expect("released");
        assert!(!dir.path().join(HANDOVER_SOCKET).exists(), "the socket file is gone with the handover");
        // The releasing side's connection stays open until its process exits: here the wait times out.
        let err = wait_until_gone(stream, Duration::from_millis(300)).expect_err("this process does not exit");
        assert!(format!("{err:#}").contains("did not stop"), "{err:#}");
    }
}
