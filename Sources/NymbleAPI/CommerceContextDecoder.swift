import EnrichCore
import NIOCore

/// Reads the `/access` answer, `{"CustomerNumber": …, "PriceTier": …, "CurrencyCode": …}`, straight from the
/// received bytes: the same answers as `JSONDecoder` with ``CommerceContext``'s `Decodable` (all three keys
/// present, each a string or null; other members of any JSON type skipped; any order, any whitespace), nil
/// for anything else, including malformed JSON anywhere in the document.
///
/// Why by hand: `JSONDecoder` builds a generic value tree and goes through the `Decoder` protocols for three
/// strings; profiled, it was about 5% of the runner's CPU per pair. A unit test checks this reader against
/// `JSONDecoder` on thousands of generated documents, valid and broken.
enum CommerceContextDecoder {
    /// The context in `buffer`'s readable bytes, or nil when they are not such an answer.
    static func decode(_ buffer: ByteBuffer, fields: AnswerFields = .nymble) -> CommerceContext? {
        buffer.withUnsafeReadableBytes { bytes in
            var reader = Reader(bytes: bytes, fields: fields)
            return reader.document()
        }
    }

    /// The context in `bytes`, or nil (for tests and callers without a buffer).
    static func decode(_ bytes: [UInt8], fields: AnswerFields = .nymble) -> CommerceContext? {
        bytes.withUnsafeBytes { bytes in
            var reader = Reader(bytes: bytes, fields: fields)
            return reader.document()
        }
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        let fields: AnswerFields
        var index = 0

        init(bytes: UnsafeRawBufferPointer, fields: AnswerFields) {
            self.bytes = bytes
            self.fields = fields
        }

        /// A field as read: absent, null, or a string.
        enum Field {
            case absent
            case null
            case text(String)
            var value: String?? {
                switch self {
                case .absent: return nil
                case .null: return .some(nil)
                case .text(let text): return .some(text)
                }
            }
        }

        mutating func document() -> CommerceContext? {
            skipWhitespace()
            guard take(UInt8(ascii: "{")) else { return nil }
            var customerNumber = Field.absent
            var priceTier = Field.absent
            var currencyCode = Field.absent
            skipWhitespace()
            if !take(UInt8(ascii: "}")) {
                while true {
                    skipWhitespace()
                    guard let key = string() else { return nil }
                    skipWhitespace()
                    guard take(UInt8(ascii: ":")) else { return nil }
                    skipWhitespace()
                    let slot: Int? =
                        key == fields.customerNumber
                        ? 0 : key == fields.priceTier ? 1 : key == fields.currencyCode ? 2 : nil
                    switch slot {
                    case .some(let slot):
                        let field: Field
                        if peek == UInt8(ascii: "\"") {
                            guard let text = string() else { return nil }
                            field = .text(text)
                        } else if literal("null") {
                            field = .null
                        } else {
                            return nil  // a number, boolean, array or object where a string belongs
                        }
                        switch slot {
                        case 0: customerNumber = field
                        case 1: priceTier = field
                        default: currencyCode = field
                        }
                    case nil:
                        guard skipValue(depth: 1) else { return nil }
                    }
                    skipWhitespace()
                    if take(UInt8(ascii: ",")) { continue }
                    guard take(UInt8(ascii: "}")) else { return nil }
                    break
                }
            }
            skipWhitespace()
            guard index == bytes.count, let customer = customerNumber.value, let tier = priceTier.value,
                let currency = currencyCode.value
            else { return nil }
            return CommerceContext(customerNumber: customer, priceTier: tier, currencyCode: currency)
        }

        var peek: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func take(_ byte: UInt8) -> Bool {
            guard peek == byte else { return false }
            index += 1
            return true
        }

        mutating func skipWhitespace() {
            while let byte = peek, byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 { index += 1 }
        }

        mutating func literal(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard index + count <= bytes.count else { return false }
            for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] { return false }
            index += count
            return true
        }

        /// A JSON string (the cursor on its opening quote), unescaped; nil when malformed.
        mutating func string() -> String? {
            guard take(UInt8(ascii: "\"")) else { return nil }
            let start = index
            var ascii = true
            // The usual case: no escapes, so the bytes are the text.
            while let byte = peek, byte != UInt8(ascii: "\""), byte != UInt8(ascii: "\\") {
                guard byte >= 0x20 else { return nil }
                ascii = ascii && byte < 0x80
                index += 1
            }
            guard let stop = peek else { return nil }
            if stop == UInt8(ascii: "\"") {
                let text = UnsafeRawBufferPointer(rebasing: bytes[start..<index])
                index += 1
                // ASCII is valid UTF-8 as it stands: `decoding` repairs nothing then, and unlike `validating` it
                // is specialized here (profiled: `validating` looked up generic metadata for every string, about
                // 2% of the runner's samples). Other text is validated.
                return ascii ? String(decoding: text, as: UTF8.self) : String(validating: text, as: UTF8.self)
            }
            var utf8 = Array(UnsafeRawBufferPointer(rebasing: bytes[start..<index]))
            while let byte = peek {
                index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    return String(validating: utf8, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard let escaped = peek else { return nil }
                    index += 1
                    switch escaped {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(escaped)
                    case UInt8(ascii: "b"): utf8.append(0x08)
                    case UInt8(ascii: "f"): utf8.append(0x0C)
                    case UInt8(ascii: "n"): utf8.append(0x0A)
                    case UInt8(ascii: "r"): utf8.append(0x0D)
                    case UInt8(ascii: "t"): utf8.append(0x09)
                    case UInt8(ascii: "u"):
                        guard let scalar = unicodeEscape() else { return nil }
                        utf8.append(contentsOf: String(Character(scalar)).utf8)
                    default: return nil
                    }
                case 0..<0x20:
                    return nil
                default:
                    utf8.append(byte)
                }
            }
            return nil
        }

        /// The scalar of `\uXXXX` (the cursor after the `u`), a surrogate pair joined; nil when malformed.
        mutating func unicodeEscape() -> Unicode.Scalar? {
            guard let high = hex4() else { return nil }
            if (0xD800..<0xDC00).contains(high) {
                guard literal("\\u"), let low = hex4(), (0xDC00..<0xE000).contains(low) else { return nil }
                return Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
            }
            return Unicode.Scalar(high)  // nil for a lone low surrogate
        }

        mutating func hex4() -> UInt32? {
            guard index + 4 <= bytes.count else { return nil }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = bytes[index]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: return nil
                }
                value = value << 4 | UInt32(digit)
                index += 1
            }
            return value
        }

        /// Skips any JSON value, checking it is well formed; false when it is not (or nests too deep).
        mutating func skipValue(depth: Int) -> Bool {
            guard depth <= 512, let byte = peek else { return false }
            switch byte {
            case UInt8(ascii: "\""):
                return string() != nil
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                let object = byte == UInt8(ascii: "{")
                let close = object ? UInt8(ascii: "}") : UInt8(ascii: "]")
                index += 1
                skipWhitespace()
                if take(close) { return true }
                while true {
                    skipWhitespace()
                    if object {
                        guard string() != nil else { return false }
                        skipWhitespace()
                        guard take(UInt8(ascii: ":")) else { return false }
                        skipWhitespace()
                    }
                    guard skipValue(depth: depth + 1) else { return false }
                    skipWhitespace()
                    if take(UInt8(ascii: ",")) { continue }
                    return take(close)
                }
            case UInt8(ascii: "t"): return literal("true")
            case UInt8(ascii: "f"): return literal("false")
            case UInt8(ascii: "n"): return literal("null")
            default: return number()
            }
        }

        /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
        mutating func number() -> Bool {
            _ = take(UInt8(ascii: "-"))
            if take(UInt8(ascii: "0")) {
                if let byte = peek, isDigit(byte) { return false }
            } else {
                guard digits() else { return false }
            }
            if take(UInt8(ascii: ".")) { guard digits() else { return false } }
            if take(UInt8(ascii: "e")) || take(UInt8(ascii: "E")) {
                if !take(UInt8(ascii: "+")) { _ = take(UInt8(ascii: "-")) }
                guard digits() else { return false }
            }
            return true
        }

        mutating func digits() -> Bool {
            let start = index
            while let byte = peek, isDigit(byte) { index += 1 }
            return index > start
        }

        func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
    }
}
