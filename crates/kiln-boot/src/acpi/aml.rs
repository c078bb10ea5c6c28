//! Just enough AML (ACPI Machine Language, ACPI 6.5 chapter 20) to describe devices: scopes,
//! devices, names, integers, strings, EISA IDs, packages and resource templates.

/// Encodes a package length (20.2.4): the length counts its own bytes.
fn pkg_length(body_len: usize) -> Vec<u8> {
    for extra in 0..=3usize {
        let total = body_len + 1 + extra;
        let fits = match extra {
            0 => total < 0x40,
            n => total < 1 << (4 + 8 * n),
        };
        if fits {
            if extra == 0 {
                return vec![total as u8];
            }
            let mut out = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            for i in 0..extra {
                out.push((total >> (4 + 8 * i)) as u8);
            }
            return out;
        }
    }
    vec![0xff] // more than 256 MiB of AML: not produced by Kiln
}

fn with_pkg_length(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = op.to_vec();
    out.extend(pkg_length(body.len()));
    out.extend(body);
    out
}

/// A four-character name segment, `_` padded (names are ASCII upper case, digits and `_`).
fn name_seg(name: &str) -> [u8; 4] {
    let mut seg = [b'_'; 4];
    for (dst, src) in seg.iter_mut().zip(name.bytes()) {
        *dst = src;
    }
    seg
}

/// An integer with the shortest encoding.
pub fn integer(value: u64) -> Vec<u8> {
    match value {
        0 => vec![0x00],
        1 => vec![0x01],
        v if v <= 0xff => vec![0x0a, v as u8],
        v if v <= 0xffff => [vec![0x0b], (v as u16).to_le_bytes().to_vec()].concat(),
        v if v <= 0xffff_ffff => [vec![0x0c], (v as u32).to_le_bytes().to_vec()].concat(),
        v => [vec![0x0e], v.to_le_bytes().to_vec()].concat(),
    }
}

/// A string constant.
pub fn string(text: &str) -> Vec<u8> {
    let mut out = vec![0x0d];
    out.extend(text.bytes());
    out.push(0);
    out
}

/// `EisaId("PNP0501")`: three letters and four hex digits compressed into a DWord.
pub fn eisa_id(id: &str) -> Vec<u8> {
    let b = id.as_bytes();
    let letter = |c: u8| u32::from(c.wrapping_sub(b'@')) & 0x1f;
    let hex = |c: u8| char::from(c).to_digit(16).unwrap_or(0);
    let value = (letter(b[0]) << 26)
        | (letter(b[1]) << 21)
        | (letter(b[2]) << 16)
        | (hex(b[3]) << 12)
        | (hex(b[4]) << 8)
        | (hex(b[5]) << 4)
        | hex(b[6]);
    [vec![0x0c], value.swap_bytes().to_le_bytes().to_vec()].concat()
}

/// `Name(NAME, object)`.
pub fn name(name: &str, object: &[u8]) -> Vec<u8> {
    let mut out = vec![0x08];
    out.extend(name_seg(name));
    out.extend(object);
    out
}

/// `Package() { elements }`.
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![elements.len() as u8];
    for e in elements {
        body.extend(e);
    }
    with_pkg_length(&[0x12], &body)
}

/// `Device(NAME) { body }`.
pub fn device(name: &str, body: &[Vec<u8>]) -> Vec<u8> {
    let mut inner = name_seg(name).to_vec();
    for b in body {
        inner.extend(b);
    }
    with_pkg_length(&[0x5b, 0x82], &inner)
}

/// `Scope(\PATH) { body }` for a root-relative single segment such as `_SB_`.
pub fn scope_root(name: &str, body: &[Vec<u8>]) -> Vec<u8> {
    let mut inner = vec![b'\\'];
    inner.extend(name_seg(name));
    for b in body {
        inner.extend(b);
    }
    with_pkg_length(&[0x10], &inner)
}

/// Resource descriptors for a `ResourceTemplate`.
pub mod resource {
    /// `IO(Decode16, base, base, 1, len)`.
    pub fn io(base: u16, len: u8) -> Vec<u8> {
        let [lo, hi] = base.to_le_bytes();
        vec![0x47, 0x01, lo, hi, lo, hi, 0x01, len]
    }

    /// `IRQNoFlags() { irq }` (edge, active high, ISA IRQ 0-15).
    pub fn irq(irq: u8) -> Vec<u8> {
        let mask = 1u16 << (irq & 15);
        [vec![0x22], mask.to_le_bytes().to_vec()].concat()
    }

    /// `Memory32Fixed(ReadWrite, base, len)`.
    pub fn memory32(base: u32, len: u32) -> Vec<u8> {
        let mut out = vec![0x86, 0x09, 0x00, 0x01];
        out.extend(base.to_le_bytes());
        out.extend(len.to_le_bytes());
        out
    }

    /// `Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }`.
    pub fn interrupt(gsi: u32) -> Vec<u8> {
        let mut out = vec![0x89, 0x06, 0x00, 0x03, 0x01];
        out.extend(gsi.to_le_bytes());
        out
    }
}

/// `ResourceTemplate() { descriptors }` as a Buffer with the end tag.
pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes: Vec<u8> = descriptors.concat();
    bytes.extend([0x79, 0x00]); // end tag; checksum 0 means "not checked"
    let mut body = integer(bytes.len() as u64);
    body.extend(bytes);
    with_pkg_length(&[0x11], &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lengths_use_one_to_four_bytes() {
        assert_eq!(pkg_length(0x3e), vec![0x3f]);
        assert_eq!(pkg_length(0x3f), vec![0x41, 0x04]); // 0x41 total: low nibble 1, then 0x04
        assert_eq!(pkg_length(0x1000), vec![0x83, 0x00, 0x01]); // total 0x1003
    }

    #[test]
    fn eisa_ids_compress_like_iasl() {
        // iasl: EisaId ("PNP0501") -> 0x0105D041
        assert_eq!(eisa_id("PNP0501"), vec![0x0c, 0x41, 0xd0, 0x05, 0x01]);
    }

    #[test]
    fn integers_take_the_shortest_form() {
        assert_eq!(integer(0), vec![0]);
        assert_eq!(integer(5), vec![0x0a, 5]);
        assert_eq!(integer(0x3f8), vec![0x0b, 0xf8, 0x03]);
        assert_eq!(integer(0xd000_0000), vec![0x0c, 0, 0, 0, 0xd0]);
    }
}
