/**
 * The images the real-Kong paths use, pinned: the testcontainers target (target.ts) and
 * docker-compose.yml, which spec/integration/06-compose.test.ts holds to the same tags.
 * KRS_KONG_IMAGE overrides Kong's for `npm run test:kong` (another 3.x, an Enterprise image).
 */
export const IMAGES = {
  kong: process.env.KRS_KONG_IMAGE ?? "kong:3.9.1",
  postgres: "postgres:16-alpine",
};
