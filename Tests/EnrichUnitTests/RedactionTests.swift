import EnrichCore
import Foundation
import NymbleAPI
import Testing

@Suite("Secrets stay out of text")
struct RedactionTests {
    @Test("credentials and tokens print redacted")
    func redacted() {
        let credentials = NymbleCredentials(orgCode: "org_1", clientId: "client", clientSecret: "S3CR3T")
        let token = AccessToken("eyJhbGciOi.secret.token")
        for text in ["\(credentials)", String(reflecting: credentials), "\(token)", String(reflecting: token)] {
            #expect(!text.contains("S3CR3T") && !text.contains("secret.token"))
        }
        #expect("\(credentials)".contains("client"))
    }

    @Test("access answers keep nulls as nulls and reject a missing field")
    func accessAnswerDecoding() throws {
        let decoded = try JSONDecoder().decode(
            CommerceContext.self,
            from: Data(#"{"CustomerNumber":"C1","PriceTier":null,"CurrencyCode":"USD"}"#.utf8)
        )
        #expect(decoded == CommerceContext(customerNumber: "C1", priceTier: nil, currencyCode: "USD"))
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(CommerceContext.self, from: Data(#"{"CustomerNumber":"C1"}"#.utf8))
        }
    }
}
