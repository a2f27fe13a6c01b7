import NIOCore
import Testing

@testable import NymbleAPI

private typealias Parser = HTTP1ResponseParser

/// Feeds `text` to a new parser in pieces of `piece` bytes (an unfinished line carried over, as the client does)
/// and returns the answers read, what failed, and the answer the connection's close completes.
private func parse(
    _ text: String,
    piece: Int = .max,
    cap: Int = 65_536,
    closeAtEnd: Bool = false
) -> (answers: [HTTP1Answer], failure: Parser.Failure?, left: Int) {
    var parser = Parser(maximumBodyBytes: cap)
    let bytes = Array(text.utf8)
    var carried = ByteBuffer()
    var answers: [HTTP1Answer] = []
    var start = 0
    do {
        while start < bytes.count {
            let end = min(bytes.count, start + min(piece, bytes.count))
            carried.writeBytes(bytes[start..<end])
            start = end
            while let answer = try parser.read(&carried) { answers.append(answer) }
        }
        if closeAtEnd, let answer = parser.readAtClose() { answers.append(answer) }
    } catch {
        return (answers, error, carried.readableBytes)
    }
    return (answers, nil, carried.readableBytes)
}

private func body(_ answer: HTTP1Answer?) -> String? { answer.map { String(buffer: $0.body) } }

private let json = #"{"CustomerNumber":"C-1","PriceTier":"Gold","CurrencyCode":null}"#

@Suite("HTTP/1.1 answers read from bytes")
struct HTTP1ResponseParserTests {
    static let sized =
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: \(json.utf8.count)"
        + "\r\nConnection: keep-alive\r\n\r\n\(json)"
    static let chunked =
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip , Chunked\r\n\r\n10;name=\"x\"\r\n\(json.prefix(16))\r\n"
        + "\(String(json.utf8.count - 16, radix: 16).uppercased()) \r\n\(json.dropFirst(16))\r\n0\r\nX-Trailer: 1\r\n\r\n"

    @Test("a sized answer, and a chunked one with extensions and trailers, read alike however the bytes arrive")
    func everySplit() {
        for text in [Self.sized, Self.chunked] {
            for piece in [1, 2, 3, 7, 64, .max] {
                let (answers, failure, left) = parse(text, piece: piece)
                #expect(failure == nil && left == 0, "piece \(piece): \(String(describing: failure))")
                #expect(answers.count == 1 && body(answers.first) == json, "piece \(piece)")
                #expect(answers.first?.status == 200 && answers.first?.keepAlive == true, "piece \(piece)")
            }
        }
    }

    @Test("two answers back to back: the first is returned, the second's bytes are left in the buffer")
    func backToBack() throws {
        var parser = Parser(maximumBodyBytes: 65_536)
        var buffer = ByteBuffer(string: Self.sized + "HTTP/1.1 204 No Content\r\n\r\n")
        let first = try parser.read(&buffer)
        #expect(body(first) == json)
        #expect(buffer.readableBytes == 27)
        let second = try parser.read(&buffer)
        #expect(second?.status == 204 && second?.body.readableBytes == 0 && buffer.readableBytes == 0)
    }

    @Test("Retry-After is read whatever the name's case (the first one); other headers are skipped")
    func retryAfter() {
        let text = "HTTP/1.1 429 Too Many Requests\r\nRETRY-after:  7 \r\nRetry-After: 9\r\nContent-Length: 0\r\n\r\n"
        let answer = parse(text).answers.first
        #expect(answer?.status == 429 && answer?.retryAfter == "7" && answer?.keepAlive == true)
        #expect(parse(Self.sized).answers.first?.retryAfter == nil)
    }

    @Test(
        "keep-alive: HTTP/1.1 unless Connection: close, HTTP/1.0 only with Connection: keep-alive",
        arguments: [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            ("HTTP/1.1 200 OK\r\nConnection: Upgrade, CLOSE\r\nContent-Length: 0\r\n\r\n", false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            ("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", true),
            ("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", true),  // an empty reason phrase
        ]
    )
    func keepAlive(text: String, expected: Bool) {
        let (answers, failure, _) = parse(text)
        #expect(failure == nil && answers.first?.keepAlive == expected)
    }

    @Test("interim 1xx answers are skipped; 204 and 304 have no body")
    func interimAndBodiless() {
        let (answers, failure, left) = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + Self.sized
                + "HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n"
        )
        #expect(failure == nil && left == 0)
        #expect(answers.map(\.status) == [200, 304] && body(answers.first) == json)
        #expect(answers.last?.body.readableBytes == 0 && answers.last?.keepAlive == true)
    }

    @Test("no framing, or a last coding other than chunked: the body runs to the close; the connection is not kept")
    func untilClose() {
        for head in [
            "HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
        ] {
            let open = parse(head + json)
            #expect(open.answers.isEmpty && open.failure == nil, "no answer before the close")
            let closed = parse(head + json, piece: 5, closeAtEnd: true)
            #expect(closed.answers.count == 1 && body(closed.answers.first) == json)
            #expect(closed.answers.first?.keepAlive == false)
        }
    }

    @Test("empty elements of a header's list are skipped: `chunked,` is chunked")
    func emptyListElements() {
        let text = Self.chunked.replacingOccurrences(of: "gzip , Chunked", with: ", gzip, chunked , ,")
        let (answers, failure, _) = parse(text)
        #expect(failure == nil && body(answers.first) == json && answers.first?.keepAlive == true)
    }

    @Test("both Transfer-Encoding: chunked and Content-Length: read as chunked, and the connection is not kept")
    func bothFramings() {
        let text = Self.chunked.replacingOccurrences(of: "\r\n\r\n10;", with: "\r\nContent-Length: 5\r\n\r\n10;")
        let answer = parse(text).answers.first
        #expect(body(answer) == json && answer?.keepAlive == false)
    }

    @Test("a body over the cap fails as too large, sized (before any of it is read), chunked or until close")
    func tooLarge() {
        #expect(parse("HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", cap: 100).failure == .tooLarge)
        #expect(parse("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", cap: 100).failure == nil)
        let chunks =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + String(repeating: "x", count: 64)
            + "\r\n40\r\n"
        #expect(parse(chunks, cap: 100).failure == .tooLarge)
        #expect(parse("HTTP/1.1 200 OK\r\n\r\n" + String(repeating: "x", count: 101), cap: 100).failure == .tooLarge)
    }

    @Test(
        "bytes that are not an HTTP/1.x answer fail as invalid",
        arguments: [
            "SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nX-Long: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\nok",
            "HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;ext\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n",
            "HTTP/1.1 200 OK\n\n",  // a head of bare LFs: failed at once, not waited on until the timeout
        ]
    )
    func invalid(text: String) {
        #expect(parse(text).failure == .invalid)
        #expect(parse(text, piece: 1).failure == .invalid)
    }

    @Test("a head over 64 KiB fails as invalid, however it arrives, instead of growing")
    func headTooLong() {
        let text = "HTTP/1.1 200 OK\r\n" + String(repeating: "X-Filler: 0123456789\r\n", count: 3_200)
        #expect(parse(text, piece: 4_096).failure == .invalid)
        #expect(parse(text + "Content-Length: 0\r\n\r\n", piece: 4_096).failure == .invalid)
        #expect(parse(text + "Content-Length: 0\r\n\r\n").failure == .invalid)  // in one read
        let fits = "HTTP/1.1 200 OK\r\n" + String(repeating: "X-Filler: 0123456789\r\n", count: 2_000)
        #expect(parse(fits + "Content-Length: 0\r\n\r\n", piece: 4_096).answers.count == 1)
    }

    @Test("a close between answers or in the middle of a sized one completes nothing")
    func closedEarly() {
        #expect(parse(Self.sized, closeAtEnd: true).answers.count == 1)
        #expect(parse(String(Self.sized.dropLast(3)), closeAtEnd: true).answers.isEmpty)
        #expect(parse(String(Self.chunked.dropLast(2)), closeAtEnd: true).answers.isEmpty)
    }
}
