import EnrichCore
import Foundation
import Testing

@testable import NymbleAPI

@Suite("The /access answer read from bytes, checked against JSONDecoder")
struct CommerceContextDecoderTests {
    private func reference(_ text: String) -> CommerceContext? {
        try? JSONDecoder().decode(CommerceContext.self, from: Data(text.utf8))
    }

    private func ours(_ text: String) -> CommerceContext? { CommerceContextDecoder.decode(Array(text.utf8)) }

    @Test(
        "documented answers and edge cases: the same as JSONDecoder",
        arguments: [
            #"{"CustomerNumber":"C-1","PriceTier":"Gold","CurrencyCode":"EUR"}"#,
            #"{"CustomerNumber":null,"PriceTier":null,"CurrencyCode":null}"#,
            #" { "CurrencyCode" : "USD" , "PriceTier":"", "CustomerNumber":"x" } "#,
            #"{"CustomerNumber":"a\"b\\c\/d\n\t\u00e9\ud83d\ude00","PriceTier":"T","CurrencyCode":"EUR"}"#,
            #"{"\u0043ustomerNumber":"C","PriceTier":"T","CurrencyCode":"EUR"}"#,
            #"{"Extra":{"a":[1,-2.5e+3,true,false,null,{"b":"c"}]},"CustomerNumber":"C","PriceTier":"T","CurrencyCode":"E"}"#,
            #"{"CustomerNumber":"C","PriceTier":"T"}"#,
            #"{"CustomerNumber":1,"PriceTier":"T","CurrencyCode":"E"}"#,
            #"{"CustomerNumber":"C","PriceTier":"T","CurrencyCode":"E"} x"#,
            "{\"CustomerNumber\":\"tab\tinside\",\"PriceTier\":\"T\",\"CurrencyCode\":\"E\"}",
            #"{"CustomerNumber":"\x","PriceTier":"T","CurrencyCode":"E"}"#,
            #"{"CustomerNumber":"\ud800","PriceTier":"T","CurrencyCode":"E"}"#,
            #"[{"CustomerNumber":"C","PriceTier":"T","CurrencyCode":"E"}]"#,
            #"<html>Bad gateway</html>"#, "", "{", "null",
        ]
    )
    func cases(_ text: String) {
        #expect(ours(text) == reference(text), "\(text)")
    }

    @Test("raw bytes in a string: ASCII and UTF-8 read as text, invalid UTF-8 (as JSONDecoder) refused")
    func rawBytes() {
        func document(_ value: [UInt8]) -> [UInt8] {
            Array(#"{"PriceTier":"T","CurrencyCode":"E","CustomerNumber":""#.utf8) + value + Array(#""}"#.utf8)
        }
        let valid: [[UInt8]] = [Array("C-000042".utf8), Array("Müller-€-😀".utf8), [0x7F]]
        for value in valid {
            let expected = CommerceContext(
                customerNumber: String(decoding: value, as: UTF8.self),
                priceTier: "T",
                currencyCode: "E"
            )
            #expect(CommerceContextDecoder.decode(document(value)) == expected, "\(value)")
        }
        // A lone continuation byte, a truncated sequence, an overlong form, a surrogate, and 0xFF.
        let invalid: [[UInt8]] = [[0x80], [0x41, 0xC3], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xFF, 0x41]]
        for value in invalid {
            #expect(CommerceContextDecoder.decode(document(value)) == nil, "\(value)")
            #expect((try? JSONDecoder().decode(CommerceContext.self, from: Data(document(value)))) == nil)
        }
    }

    @Test(
        "malformed JSON that JSONDecoder lets through (it checks skipped values lazily) is refused",
        arguments: [
            #"{"CustomerNumber":"C","PriceTier":"T","CurrencyCode":"E",}"#,
            #"{"Extra":01,"CustomerNumber":"C","PriceTier":"T","CurrencyCode":"E"}"#,
            #"{"Extra":-,"CustomerNumber":"C","PriceTier":"T","CurrencyCode":"E"}"#,
            #"{"Extra":1.,"CustomerNumber":"C","PriceTier":"T","CurrencyCode":"E"}"#,
        ]
    )
    func stricter(_ text: String) {
        #expect(ours(text) == nil, "\(text)")
    }

    /// Well-formed documents (no repeated key) read exactly as JSONDecoder reads them; of the broken ones,
    /// whatever this reader accepts JSONDecoder accepts with the same values (it never reads more).
    @Test("thousands of generated documents, well formed and broken, checked against JSONDecoder")
    func generated() {
        var random = SeededGenerator(state: 42)
        let values = [
            #""plain""#, "null", #""é ü €""#, #""esc \" \\ \/ \b\f\n\r\t \u0041 \ud83d\ude00""#, "12", "-0.5e-7",
            "true", "false", "[]", "{}", #"[1,"a",null,[{"k":false}]]"#, #"{"n":{"m":[]}}"#, #""""#,
        ]
        let textOrNull = values.filter { $0.hasPrefix("\"") || $0 == "null" }
        let keys = ["CustomerNumber", "PriceTier", "CurrencyCode", "Other", "customerNumber", "Cust\\u006fmerNumber"]
        let spaces = ["", " ", "\n", "\t ", "\r\n"]
        var accepted = 0
        var lenient = 0
        for _ in 0..<5_000 {
            var members: [String] = []
            var chosen = Array(keys.shuffled(using: &random).prefix(Int.random(in: 2...5, using: &random)))
            if chosen.contains("CustomerNumber") { chosen.removeAll { $0.hasPrefix("Cust\\") } }  // no repeated key
            for key in chosen {
                let space = spaces.randomElement(using: &random)!
                // The three fields mostly get a string or null, so that many documents are answers.
                let pool = key.hasPrefix("Other") || Int.random(in: 0..<5, using: &random) == 0 ? values : textOrNull
                members.append("\(space)\"\(key)\"\(space):\(space)\(pool.randomElement(using: &random)!)\(space)")
            }
            var text = "{" + members.joined(separator: ",") + "}"
            // Break about a third of them: drop, duplicate or replace one byte.
            let broken = Int.random(in: 0..<3, using: &random) == 0
            if broken {
                var bytes = Array(text.utf8)
                let at = Int.random(in: 0..<bytes.count, using: &random)
                switch Int.random(in: 0..<3, using: &random) {
                case 0: bytes.remove(at: at)
                case 1: bytes.insert(bytes[at], at: at)
                default: bytes[at] = Array(#"{}[]",:0-.e\u "#.utf8).randomElement(using: &random)!
                }
                guard let changed = String(validating: bytes, as: UTF8.self) else { continue }
                text = changed
            }
            let expected = reference(text)
            let read = ours(text)
            if broken {
                if read != nil { #expect(read == expected, "\(text)") }
                if read == nil && expected != nil { lenient += 1 }
            } else {
                #expect(read == expected, "\(text)")
                if expected != nil { accepted += 1 }
            }
        }
        #expect(accepted > 200, "the generator produces decodable answers too: \(accepted)")
        #expect(lenient < 200, "broken documents JSONDecoder accepts and this reader refuses: \(lenient)")
    }
}
