// An independent holder for the verifier's tests: SD-JWT VCs issued and presented with the
// npm packages @sd-jwt/sd-jwt-vc and @sd-jwt/crypto-nodejs (not our Python code), speaking
// OpenID4VP over real HTTP: open the openid4vp:// link, fetch the request object from
// request_uri, check its signature against the did:jwk client identifier, present the asked
// claims with a key-binding JWT and post them (direct_post).
//
// Input (stdin, JSON): {link, issuer_jwk, iss, vct, claims, x5c?}; output (stdout, JSON):
// {status, body, asked} — the response_uri's answer and the claim names that were asked.
import { SDJwtVcInstance } from "@sd-jwt/sd-jwt-vc";
import { ES256, digest, generateSalt } from "@sd-jwt/crypto-nodejs";

function b64urlJson(segment) {
  return JSON.parse(Buffer.from(segment, "base64url").toString("utf8"));
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));

  const link = new URL(input.link);
  const clientId = link.searchParams.get("client_id");
  const requestUri = link.searchParams.get("request_uri");
  const prefix = "decentralized_identifier:did:jwk:";
  if (!clientId || !clientId.startsWith(prefix) || !requestUri) {
    throw new Error("not an OpenID4VP link with a did:jwk client id");
  }

  const fetched = await fetch(requestUri);
  if (fetched.status !== 200) throw new Error(`request_uri answered ${fetched.status}`);
  if (!(fetched.headers.get("content-type") || "").startsWith("application/oauth-authz-req+jwt")) {
    throw new Error("request_uri did not answer a request object");
  }
  const requestJwt = (await fetched.text()).trim();
  const [h, p, s] = requestJwt.split(".");
  const header = b64urlJson(h);
  const request = b64urlJson(p);
  if (header.typ !== "oauth-authz-req+jwt" || request.client_id !== clientId) {
    throw new Error("the request object does not fit the link");
  }
  const verifierKey = b64urlJson(clientId.slice(prefix.length));
  const checkRequest = await ES256.getVerifier(verifierKey);
  if (!(await checkRequest(`${h}.${p}`, s))) throw new Error("bad request signature");
  if (request.response_mode !== "direct_post") throw new Error("this holder only does direct_post");

  const query = request.dcql_query.credentials[0];
  const asked = query.claims.map((c) => c.path[0]);

  const holder = await ES256.generateKeyPair();
  const sdjwt = new SDJwtVcInstance({
    signer: await ES256.getSigner(input.issuer_jwk),
    signAlg: ES256.alg,
    hasher: digest,
    hashAlg: "sha-256",
    saltGenerator: generateSalt,
    kbSigner: await ES256.getSigner(holder.privateKey),
    kbSignAlg: ES256.alg,
  });
  const now = Math.floor(Date.now() / 1000);
  const credential = await sdjwt.issue(
    {
      iss: input.iss,
      iat: now,
      exp: now + 3600,
      vct: input.vct,
      cnf: { jwk: { kty: holder.publicKey.kty, crv: holder.publicKey.crv, x: holder.publicKey.x, y: holder.publicKey.y } },
      ...input.claims,
    },
    { _sd: Object.keys(input.claims) },
    { header: input.x5c ? { typ: "dc+sd-jwt", x5c: input.x5c } : { typ: "dc+sd-jwt", kid: `${input.iss}#0` } },
  );
  const frame = Object.fromEntries(asked.map((name) => [name, true]));
  const presentation = await sdjwt.present(credential, frame, {
    kb: { payload: { iat: now, aud: clientId, nonce: request.nonce } },
  });

  const answer = await fetch(request.response_uri, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      vp_token: JSON.stringify({ [query.id]: [presentation] }),
      state: request.state,
    }),
  });
  process.stdout.write(JSON.stringify({ status: answer.status, body: await answer.text(), asked }));
}

main().catch((error) => {
  process.stderr.write(`holder: ${error.message}\n`);
  process.exit(1);
});
