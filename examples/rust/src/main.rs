//! KV1, a line-based key-value service that receives its clients from
//! portmux (docs/handoff.md). The standard library only: recvmsg and
//! SO_PEERCRED through `extern "C"`, with the layouts of Linux glibc on
//! x86_64 and aarch64 written out below. A thread per channel and per
//! client, so no client waits for another.
//!
//!   rustc --edition 2021 -O -o kv src/main.rs    (or: cargo build --release --offline)
//!   ./kv SOCKET_PATH [--sender-uid UID]
//!
//! A channel is taken only from a process of our own uid or root
//! (--sender-uid: that uid only), checked with SO_PEERCRED.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use std::{env, fs, mem, process, ptr, thread};

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!("the layouts below are those of Linux on x86_64 and aarch64");

const MAX_FDS: usize = 16; // room for fds in each read (the contract needs one)
const MAX_RECORD: usize = 64 * 1024; // a longer "record" is not portmux's
const MAX_LINE: usize = 4096; // a client's line, its newline included

// <sys/socket.h> and <bits/socket.h> on Linux x86_64 and aarch64 (glibc).
#[repr(C)]
struct IoVec {
    base: *mut c_void,
    len: usize,
}
#[repr(C)]
struct MsgHdr {
    name: *mut c_void,
    namelen: u32,
    iov: *mut IoVec,
    iovlen: usize,
    control: *mut c_void,
    controllen: usize,
    flags: c_int,
}
#[repr(C)]
struct CmsgHdr {
    len: usize,
    level: c_int,
    kind: c_int,
}
#[repr(C)]
struct UCred {
    pid: i32,
    uid: u32,
    gid: u32,
}
const _: () = assert!(mem::size_of::<MsgHdr>() == 56 && mem::size_of::<CmsgHdr>() == 16);
const SOL_SOCKET: c_int = 1;
const SCM_RIGHTS: c_int = 1;
const SO_PEERCRED: c_int = 17;
const MSG_CTRUNC: c_int = 0x8;
const MSG_CMSG_CLOEXEC: c_int = 0x4000_0000;
const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const EINTR: i32 = 4;

extern "C" {
    fn recvmsg(fd: c_int, msg: *mut MsgHdr, flags: c_int) -> isize;
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut u32)
        -> c_int;
    fn close(fd: c_int) -> c_int;
    fn getuid() -> u32;
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn unlink(path: *const c_char) -> c_int;
    fn _exit(code: c_int) -> !;
}

// CMSG_ALIGN, CMSG_SPACE and CMSG_LEN of glibc, for 64-bit Linux.
const fn cmsg_align(n: usize) -> usize {
    (n + 7) & !7
}
const HEADER: usize = cmsg_align(mem::size_of::<CmsgHdr>());
const CONTROL: usize = HEADER + cmsg_align(MAX_FDS * 4);

type Store = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

fn log(message: &str) {
    eprintln!("kv: {}", message);
}

// ---- a client ----

/// The reply to one command line (without its newline).
fn answer(line: &[u8], who: &str, store: &Store) -> Vec<u8> {
    let (command, rest) = split_space(line);
    match (command, rest) {
        (b"SET", Some(rest)) => {
            if let (key, Some(value)) = split_space(rest) {
                if !key.is_empty() {
                    store.lock().unwrap().insert(key.to_vec(), value.to_vec());
                    return b"OK".to_vec();
                }
            }
        }
        (b"GET", Some(key)) if !key.is_empty() && !key.contains(&b' ') => {
            return match store.lock().unwrap().get(key) {
                Some(value) => value.clone(),
                None => b"NOTFOUND".to_vec(),
            };
        }
        (b"WHO", None) => return who.as_bytes().to_vec(),
        _ => {}
    }
    b"ERR bad command".to_vec()
}

fn split_space(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|&b| b == b' ') {
        Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
        None => (bytes, None),
    }
}

/// One client, from its very first byte: portmux only peeked.
fn serve_client(client: TcpStream, who: String, store: Store) -> io::Result<()> {
    client.set_nonblocking(false)?; // it arrives non-blocking
    let mut writer = &client; // reads and writes share the one socket
    let mut reader = BufReader::new(&client);
    let mut greeted = false;
    loop {
        let mut line = Vec::new();
        reader
            .by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            if line.len() == MAX_LINE {
                writer.write_all(b"ERR line too long\n")?;
            }
            return Ok(()); // the client is done (or sent too long a line)
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop(); // a CRLF line, as nc -C or telnet send
        }
        if !greeted {
            if line != b"KV1" {
                return writer.write_all(b"ERR expected KV1\n");
            }
            greeted = true;
            continue;
        }
        let mut reply = answer(&line, &who, &store);
        reply.push(b'\n');
        writer.write_all(&reply)?;
    }
}

// ---- a channel ----

/// One record and its fd (None: the fd was lost).
fn take(line: &[u8], fd: Option<RawFd>, store: &Store) {
    let fd = match fd {
        Some(fd) => fd,
        None => return log("a record whose fd was lost (MSG_CTRUNC): skipped"),
    };
    // The TcpStream owns the fd from here: dropped, it closes it.
    let client = unsafe { TcpStream::from_raw_fd(fd) };
    let who = match read_record(line) {
        Ok(who) => who,
        Err(e) => {
            return log(&format!(
                "not a portmux record ({}): its client is closed",
                e
            ))
        }
    };
    log(&format!("client {}", who));
    let store = store.clone();
    let spawned = thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let _ = serve_client(client, who, store);
        });
    if let Err(e) = spawned {
        log(&format!("a client dropped: {}", e)); // the closure, and the client, are gone
    }
}

/// Reads records and fds until portmux closes the channel.
fn serve_channel(channel: UnixStream, store: Store) {
    let mut pending: Vec<u8> = Vec::new();
    let mut fds: VecDeque<Option<RawFd>> = VecDeque::new(); // None: a lost fd
    let mut buf = vec![0u8; 65536];
    let mut control = [0u64; CONTROL / 8]; // 8-byte aligned, as cmsghdr needs
    loop {
        let mut iov = IoVec {
            base: buf.as_mut_ptr() as *mut c_void,
            len: buf.len(),
        };
        let mut msg = MsgHdr {
            name: ptr::null_mut(),
            namelen: 0,
            iov: &mut iov,
            iovlen: 1,
            control: control.as_mut_ptr() as *mut c_void,
            controllen: CONTROL,
            flags: 0,
        };
        let n = unsafe { recvmsg(channel.as_raw_fd(), &mut msg, MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(EINTR) {
                continue;
            }
            log(&format!("channel: {}", e));
            break;
        }
        let got = received_fds(&control, msg.controllen.min(CONTROL));
        if msg.flags & MSG_CTRUNC != 0 && got.is_empty() {
            fds.push_back(None); // the kernel closed the fd of the record starting here
        }
        fds.extend(got.into_iter().map(Some));
        if n == 0 {
            break; // portmux closed the channel
        }
        pending.extend_from_slice(&buf[..n as usize]);
        let mut start = 0;
        while let Some(at) = pending[start..].iter().position(|&b| b == b'\n') {
            match fds.pop_front() {
                // the i-th fd is the i-th record's
                Some(fd) => take(&pending[start..start + at], fd, &store),
                None => log("a record came without an fd: skipped"),
            }
            start += at + 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_RECORD {
            log("a record longer than 64 KiB: closing the channel");
            break;
        }
    }
    for fd in fds.into_iter().flatten() {
        unsafe { close(fd) }; // a record cut short: its client is closed
    }
}

/// The fds of the SCM_RIGHTS messages in the first len bytes of control.
fn received_fds(control: &[u64], len: usize) -> Vec<RawFd> {
    let bytes = control.as_ptr() as *const u8;
    let mut fds = Vec::new();
    let mut at = 0;
    while at + HEADER <= len {
        let header = unsafe { ptr::read_unaligned(bytes.add(at) as *const CmsgHdr) };
        if header.len < HEADER || at + header.len > len {
            break;
        }
        if header.level == SOL_SOCKET && header.kind == SCM_RIGHTS {
            for i in 0..(header.len - HEADER) / 4 {
                fds.push(unsafe {
                    ptr::read_unaligned(bytes.add(at + HEADER + 4 * i) as *const i32)
                });
            }
        }
        at += cmsg_align(header.len);
    }
    fds
}

// ---- the record: a small JSON reader ----

/// A JSON value, as much of it as a record needs.
enum Json {
    Number(f64),
    Text(String),
    Object(Vec<(String, Json)>),
    Other, // null, true, false, or a list (read, not kept)
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn space(&mut self) {
        while self.at < self.text.len() && b" \t\r\n".contains(&self.text[self.at]) {
            self.at += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.space();
        let yes = self.text.get(self.at) == Some(&c);
        if yes {
            self.at += 1;
        }
        yes
    }
    fn word(&mut self, word: &str) -> Result<Json, String> {
        if self.text[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(Json::Other)
        } else {
            Err(format!("bad JSON at byte {}", self.at))
        }
    }
    fn value(&mut self, depth: usize) -> Result<Json, String> {
        self.space();
        if depth > 32 {
            return Err("nested too deep".into());
        }
        match self.text.get(self.at) {
            Some(b'{') | Some(b'[') => {
                let object = self.text[self.at] == b'{';
                let close = if object { b'}' } else { b']' };
                self.at += 1;
                let mut fields = Vec::new();
                if !self.eat(close) {
                    loop {
                        if object {
                            let key = self.string()?;
                            if !self.eat(b':') {
                                return Err("':' expected".into());
                            }
                            fields.push((key, self.value(depth + 1)?));
                        } else {
                            self.value(depth + 1)?;
                        }
                        if self.eat(close) {
                            break;
                        }
                        if !self.eat(b',') {
                            return Err("',' expected".into());
                        }
                    }
                }
                Ok(if object {
                    Json::Object(fields)
                } else {
                    Json::Other
                })
            }
            Some(b'"') => Ok(Json::Text(self.string()?)),
            Some(b't') => self.word("true"),
            Some(b'f') => self.word("false"),
            Some(b'n') => self.word("null"),
            _ => {
                let start = self.at;
                while self.at < self.text.len() && b"+-.0123456789eE".contains(&self.text[self.at])
                {
                    self.at += 1;
                }
                let text = std::str::from_utf8(&self.text[start..self.at]).unwrap_or("");
                text.parse()
                    .map(Json::Number)
                    .map_err(|_| format!("bad JSON at byte {}", start))
            }
        }
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .ok_or("bad \\u escape")?;
        self.at += 4;
        let text = std::str::from_utf8(digits).map_err(|_| "bad \\u escape")?;
        u32::from_str_radix(text, 16).map_err(|_| "bad \\u escape".into())
    }
    fn string(&mut self) -> Result<String, String> {
        if !self.eat(b'"') {
            return Err("string expected".into());
        }
        let mut out = Vec::new();
        loop {
            let c = *self.text.get(self.at).ok_or("unterminated string")?;
            self.at += 1;
            match c {
                b'"' => break,
                0..=0x1f => return Err("control character in a string".into()),
                b'\\' => {
                    let e = *self.text.get(self.at).ok_or("unterminated string")?;
                    self.at += 1;
                    let plain = match e {
                        b'"' | b'\\' | b'/' => e,
                        b'b' => 8,
                        b'f' => 12,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => 0,
                        _ => return Err("bad escape".into()),
                    };
                    if e != b'u' {
                        out.push(plain);
                        continue;
                    }
                    let mut code = self.hex4()?;
                    if (0xd800..0xdc00).contains(&code) && self.text[self.at..].starts_with(b"\\u")
                    {
                        self.at += 2;
                        let low = self.hex4()?;
                        if !(0xdc00..0xe000).contains(&low) {
                            return Err("bad surrogate pair".into());
                        }
                        code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                    }
                    let ch = char::from_u32(code).ok_or("bad \\u escape")?;
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| "a string that is not UTF-8".into())
    }
}

/// The record's client as "address port" (docs/handoff.md: the record).
fn read_record(line: &[u8]) -> Result<String, String> {
    let mut parser = Parser { text: line, at: 0 };
    let record = parser.value(0)?;
    parser.space();
    if parser.at != line.len() {
        return Err("bytes after the JSON object".into());
    }
    match record.get("v") {
        Some(Json::Number(v)) if *v == 1.0 => {}
        _ => return Err("not version 1".into()),
    }
    let client = record.get("client");
    match (
        client.and_then(|c| c.get("address")),
        client.and_then(|c| c.get("port")),
    ) {
        (Some(Json::Text(address)), Some(Json::Number(port)))
            if *port >= 0.0 && *port <= 65535.0 && port.fract() == 0.0 =>
        {
            Ok(format!("{} {}", address, *port as u16))
        }
        _ => Err("no client address and port".into()),
    }
}

// ---- main ----

static SOCKET_PATH: AtomicPtr<c_char> = AtomicPtr::new(ptr::null_mut());

extern "C" fn on_stop(_: c_int) {
    unsafe {
        unlink(SOCKET_PATH.load(Ordering::SeqCst)); // both async-signal-safe
        _exit(0);
    }
}

fn listen_at(path: &str) -> Result<UnixListener, String> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            match UnixStream::connect(path) {
                Ok(_) => return Err(format!("{}: another service is receiving there", path)),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    let _ = fs::remove_file(path); // a stale socket file: nobody answers on it
                }
                Err(_) => {}
            }
        }
    }
    UnixListener::bind(path).map_err(|e| format!("{}: {}", path, e))
}

fn peer_uid(channel: &UnixStream) -> (u32, i32) {
    let mut cred = UCred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = mem::size_of::<UCred>() as u32;
    let cred_ptr = &mut cred as *mut UCred as *mut c_void;
    unsafe {
        getsockopt(
            channel.as_raw_fd(),
            SOL_SOCKET,
            SO_PEERCRED,
            cred_ptr,
            &mut len,
        )
    };
    (cred.uid, cred.pid)
}

fn main() {
    let args: Vec<String> = env::args().collect();
    let sender: Option<u32> = match args.len() {
        2 => None,
        4 if args[2] == "--sender-uid" => args[3].parse().ok(),
        _ => None,
    };
    if !(args.len() == 2 || (args.len() == 4 && sender.is_some())) {
        eprintln!("usage: {} SOCKET_PATH [--sender-uid UID]", args[0]);
        process::exit(2);
    }
    let path = &args[1];
    let listener = match listen_at(path) {
        Ok(listener) => listener,
        Err(e) => {
            log(&e);
            process::exit(1);
        }
    };
    let c_path = CString::new(std::path::Path::new(path).as_os_str().as_bytes()).unwrap();
    SOCKET_PATH.store(c_path.into_raw(), Ordering::SeqCst);
    unsafe {
        signal(SIGTERM, on_stop);
        signal(SIGINT, on_stop);
    }
    log(&format!("listening on {}", path));
    let me = unsafe { getuid() };
    let store: Store = Arc::new(Mutex::new(HashMap::new()));
    for channel in listener.incoming() {
        let channel = match channel {
            Ok(channel) => channel,
            Err(e) => {
                log(&format!("accept: {}", e)); // out of fds, say: the channel waits in the backlog
                thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let (uid, pid) = peer_uid(&channel);
        let allowed = match sender {
            Some(sender) => uid == sender,
            None => uid == me || uid == 0,
        };
        if !allowed {
            log(&format!("refused a channel from uid {} (pid {})", uid, pid));
            continue; // dropped: closed
        }
        let store = store.clone();
        if let Err(e) = thread::Builder::new().spawn(move || serve_channel(channel, store)) {
            log(&format!("a channel dropped: {}", e));
        }
    }
}
