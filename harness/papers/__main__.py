from harness.papers import main

main()
