/**
 * The same endpoints on Kong's Status API (status_listen), where Prometheus scrapes
 * without reaching the Admin API.
 */
import { clusterWide, local } from "./scrape";

const api = {
  "/redis-metrics": { GET: local },
  "/redis-metrics/cluster": { GET: clusterWide },
};

export = api;
