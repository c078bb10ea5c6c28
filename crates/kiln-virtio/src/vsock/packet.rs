//! The `virtio_vsock_hdr` that starts every vsock packet (virtio 1.2, section 5.10.6), and its
//! checks. All fields are little-endian; the header is 44 bytes, packed.

/// Size of `virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// Largest payload one packet may carry (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type Kiln offers.
pub const TYPE_STREAM: u16 = 1;

/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Connection request.
    Request,
    /// Connection accepted.
    Response,
    /// Connection reset (refused, or torn down).
    Rst,
    /// One or both directions closed (`flags`: [`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
    Shutdown,
    /// Data.
    Rw,
    /// The sender's `buf_alloc`/`fwd_cnt` changed.
    CreditUpdate,
    /// The sender asks for a credit update.
    CreditRequest,
}

impl Op {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }

    fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// Why a header from the guest is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer than 44 bytes.
    #[error("packet of {0} bytes is shorter than the 44-byte header")]
    Short(usize),
    /// An operation code the device does not know.
    #[error("unknown operation {0}")]
    UnknownOp(u16),
    /// Not a stream socket.
    #[error("unsupported socket type {0}")]
    Type(u16),
    /// `len` larger than [`MAX_PAYLOAD`] or than the buffer holding it.
    #[error("payload length {len} exceeds {limit} bytes")]
    Length {
        /// The length claimed.
        len: u32,
        /// The most allowed.
        limit: u32,
    },
}

/// A decoded `virtio_vsock_hdr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation.
    pub op: Op,
    /// Operation flags (shutdown directions).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// A header from the host (CID 2) to `guest_cid` with no payload and no credit fields.
    pub fn to_guest(guest_cid: u64, host_port: u32, guest_port: u32, op: Op) -> Self {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: host_port,
            dst_port: guest_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// Decodes a header whose payload of `len` bytes must fit in `payload_room` bytes.
    pub fn parse(bytes: &[u8], payload_room: usize) -> Result<Self, PacketError> {
        let b: &[u8; HDR_LEN] = bytes
            .get(..HDR_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(PacketError::Short(bytes.len()))?;
        let code = u16_at(b, 30);
        let op = Op::from_code(code).ok_or(PacketError::UnknownOp(code))?;
        let kind = u16_at(b, 28);
        if kind != TYPE_STREAM {
            return Err(PacketError::Type(kind));
        }
        let len = u32_at(b, 24);
        let limit = MAX_PAYLOAD.min(u32::try_from(payload_room).unwrap_or(u32::MAX));
        if len > limit {
            return Err(PacketError::Length { len, limit });
        }
        Ok(Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len,
            kind,
            op,
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        })
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.code().to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 52,
            len: 5,
            kind: TYPE_STREAM,
            op: Op::Rw,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 17,
        }
    }

    #[test]
    fn headers_round_trip_through_their_wire_form() {
        let h = sample();
        assert_eq!(Header::parse(&h.encode(), 5), Ok(h));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let h = sample();
        assert_eq!(Header::parse(&h.encode()[..43], 5), Err(PacketError::Short(43)));
        assert_eq!(Header::parse(&h.encode(), 4), Err(PacketError::Length { len: 5, limit: 4 }));
        let mut raw = h.encode();
        raw[30] = 9;
        assert_eq!(Header::parse(&raw, 5), Err(PacketError::UnknownOp(9)));
        let mut raw = h.encode();
        raw[28] = 2;
        assert_eq!(Header::parse(&raw, 5), Err(PacketError::Type(2)));
        let big = Header { len: MAX_PAYLOAD + 1, ..h };
        assert!(matches!(
            Header::parse(&big.encode(), usize::MAX),
            Err(PacketError::Length { .. })
        ));
    }
}
