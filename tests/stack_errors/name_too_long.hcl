cluster "a-very-long-cluster-name-that-will-not-fit-in-dns-labels" {}
