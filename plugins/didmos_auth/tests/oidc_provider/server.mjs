// A real OpenID Connect provider (panva's oidc-provider, certified by the OpenID Foundation) for the
// didmos_auth tests. The pytest fixture `oidc_provider` (../conftest.py) writes the JSON configuration,
// starts this script, and stops it; nothing here is meant for production.
//
//   node server.mjs CONFIG.json [PORT]     (PORT may also come from the environment variable PORT)
//
// It listens on 127.0.0.1 only, with issuer http://127.0.0.1:PORT. The configuration file holds:
//
//   jwks               {"keys": [...]} private signing keys; for each alg the first key listed signs
//   access_token_ttl   seconds a client_credentials access token lives unless its client says otherwise
//   scopes             scopes the provider knows (kept in tokens issued without a resource indicator)
//   clients            [{client_id, client_secret, grant_types, scope, access_token_ttl?, introspection?}]
//                      only clients with "introspection": true (resource servers) learn at the
//                      introspection endpoint whether a token is active; others are told it is not
//   resources          {"<resource indicator>": {scope, alg}}: a client_credentials request naming one
//                      gets a JWT access token for that audience, signed with alg; without a resource
//                      indicator the token is opaque (and introspectable)
//
// Every request and every error is written to stdout, which the fixture sends to a log file.

import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

function fail(message) {
  console.error(`server.mjs: ${message}`);
  process.exit(2);
}

const [configPath, portArgument] = process.argv.slice(2);
if (!configPath) fail('usage: node server.mjs CONFIG.json [PORT]');
const port = Number(portArgument ?? process.env.PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  fail(`the port must be an integer from 1 to 65535 (argument or PORT), got ${portArgument ?? process.env.PORT}`);
}

let settings;
try {
  settings = JSON.parse(readFileSync(configPath, 'utf8'));
} catch (error) {
  fail(`cannot read the configuration ${configPath}: ${error.message}`);
}

const issuer = `http://127.0.0.1:${port}`;
const defaultTtl = settings.access_token_ttl ?? 60;
const clientTtl = new Map(
  settings.clients.filter((client) => client.access_token_ttl).map((client) => [client.client_id, client.access_token_ttl]),
);
const resources = settings.resources ?? {};
const introspectors = new Set(settings.clients.filter((client) => client.introspection).map((client) => client.client_id));

function log(...parts) {
  console.log(new Date().toISOString(), ...parts);
}

const provider = new Provider(issuer, {
  jwks: settings.jwks,
  scopes: settings.scopes ?? ['openid'],
  clients: settings.clients.map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    grant_types: client.grant_types ?? [],
    // Machine clients only: no browser flow, so no response types and no redirect URIs.
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    ...(client.scope ? { scope: client.scope } : {}),
  })),
  features: {
    // The development login pages are not needed (no browser flows) and must never be on.
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      allowedPolicy: async (ctx, client) => introspectors.has(client.clientId),
    },
    // A client revokes only its own tokens.
    revocation: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      // No resource indicator: no audience, so the access token stays opaque.
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (ctx, indicator) => {
        const resource = resources[indicator];
        if (!resource) {
          // InvalidTarget is the RFC 8707 error (invalid_target) for an unknown resource.
          throw new errors.InvalidTarget(`unknown resource indicator ${indicator}`);
        }
        return {
          audience: indicator,
          scope: resource.scope,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: resource.alg ?? 'RS256' } },
        };
      },
    },
  },
  ttl: {
    ClientCredentials: (ctx, token, client) => clientTtl.get(client.clientId) ?? defaultTtl,
    AccessToken: (ctx, token, client) => clientTtl.get(client.clientId) ?? defaultTtl,
  },
  // Signed cookies are not used without interactions; fresh keys keep oidc-provider from warning.
  cookies: { keys: [randomBytes(32).toString('base64url')] },
});

provider.use(async (ctx, next) => {
  await next();
  log(ctx.method, ctx.path, ctx.status);
});
for (const event of ['grant.error', 'introspection.error', 'revocation.error', 'jwks.error', 'discovery.error']) {
  provider.on(event, (ctx, error) => log(event, error.name, error.message, error.error_description ?? ''));
}
provider.on('server_error', (ctx, error) => log('server_error', error.stack));
provider.on('grant.success', (ctx) => log('grant.success', ctx.oidc.client?.clientId, ctx.oidc.params.resource ?? '(no resource)'));

const server = provider.listen(port, '127.0.0.1', () => log(`listening, issuer ${issuer}`));
server.on('error', (error) => fail(`cannot listen on 127.0.0.1:${port}: ${error.message}`));

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    log(`${signal}: stopping`);
    server.close(() => process.exit(0));
    // Keep-alive connections of the test client would hold close() open; do not wait for them.
    server.closeAllConnections?.();
  });
}
