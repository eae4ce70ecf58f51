from statepipe.views.cli import main

main()
