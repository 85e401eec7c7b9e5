-- wrk: GET the URL given on the command line with the bench's API key (BENCH_KEY).
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
